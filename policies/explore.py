"""Exploration noise around a behaviour policy, for collecting an experience pool.

Offline RL learns nothing about actions the data never shows. Wrapping the rule-based policies
(DualPI2, PIE, ...) with noise widens what the pool covers while staying close enough to
sensible control that the runs remain realistic: with probability `epsilon` per update the
decision is moved and held for `hold` updates so the queue has time to respond.

The noise acts on the base probability p' that DualPI2 controls (issue 14, item 2), not on
each class independently: p' = sqrt(p_C) (or p_L / k when the classic probability is 0) is
scaled by one log-uniform factor in [1/spread, spread], the classic probabilities by its
square and the L4S ones by the factor itself, so a coupled behaviour stays coupled. A zero p'
(an empty queue) is first raised to `floor`, on the scale of real probabilities: with the
defaults (1e-5, spread 4) an explored empty-queue decision signals with at most p_L = 8e-5 and
p_C = 1.6e-9 (the old 0.005 floor made the mean label there 75x what DualPI2 says).

`log_extra()` gives the columns the control loop adds to each row: `explore` (1 while the
decision is explored) and `per_packet` (the behaviour acts per packet, so the pool labels its
rows with what it did: dataset.action_targets).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from policies.base import ClassDecision, Decision, Policy, QueueConfig, QueueState
from policies.coupled import K


class Explore(Policy):
    """Not registered: built by `testbed collect` around a registered policy."""

    def __init__(self, inner: Policy, epsilon: float = 0.2, spread: float = 4.0, hold: int = 4,
                 seed: int = 0, floor: float = 1e-5) -> None:
        super().__init__(inner.params)
        self.inner, self.epsilon, self.spread, self.hold = inner, epsilon, spread, hold
        self.floor = floor
        self.name = inner.name
        self.datapaths = inner.datapaths
        self.per_packet = inner.per_packet
        self.rng = np.random.default_rng(seed)
        self.factor = 1.0
        self.left = 0
        self.exploring = False

    def queue_config(self) -> QueueConfig:
        return self.inner.queue_config()

    def on_dequeue(self, cls: str, sojourn_s: float, now: float, backlog_bytes: int):  # noqa: ANN201
        return self.inner.on_dequeue(cls, sojourn_s, now, backlog_bytes)

    def update(self, state: QueueState) -> Decision:
        decision = self.inner.update(state)
        if self.left == 0 and self.rng.random() < self.epsilon:
            span = math.log(self.spread)
            self.factor = math.exp(self.rng.uniform(-span, span))
            self.left = self.hold
        self.exploring = self.left > 0
        if not self.exploring:
            return decision
        self.left -= 1
        return explore(decision, self.factor, self.floor)

    def log_extra(self) -> dict[str, float]:
        return {"explore": float(self.exploring), "per_packet": float(self.per_packet)}


def base_probability(decision: Decision) -> float:
    """p' of a decision: sqrt(p_C), else p_L / k, of the per-class signal probabilities."""
    p_c = decision.classic.p_drop + decision.classic.p_mark
    p_l = decision.l4s.p_drop + decision.l4s.p_mark
    return math.sqrt(p_c) if p_c > 0 else p_l / K  # RFC 9332's coupling factor (DualPI2's default)


def explore(decision: Decision, factor: float, floor: float) -> Decision:
    """The decision with its p' scaled by `factor` (a zero p' raised to `floor` first)."""
    p = base_probability(decision)
    if p < floor:  # nothing (or next to nothing) signalled: signal at the floor, coupled
        p = floor * factor
        return Decision(l4s=replace(decision.l4s, p_drop=0.0, p_mark=min(1.0, K * p)),
                        classic=replace(decision.classic, p_drop=0.0, p_mark=p * p))
    return Decision(l4s=_scale(decision.l4s, factor), classic=_scale(decision.classic, factor ** 2))


def _scale(d: ClassDecision, factor: float) -> ClassDecision:
    drop = min(max(d.p_drop, 0.0) * factor, 1.0)
    mark = min(max(d.p_mark, 0.0) * factor, 1.0 - drop)
    return replace(d, p_drop=drop, p_mark=mark)
