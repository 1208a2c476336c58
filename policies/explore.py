"""Exploration noise around a behaviour policy, for collecting an experience pool.

Offline RL learns nothing about actions the data never shows. Wrapping the rule-based policies
(DualPI2, PIE, ...) with noise widens what the pool covers while staying close enough to
sensible control that the runs remain realistic: with probability `epsilon` per update the
decision's probabilities are scaled by a log-uniform factor in [1/spread, spread], and held
for `hold` updates so the queue has time to respond.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from policies.base import ClassDecision, Decision, Policy, QueueConfig, QueueState


class Explore(Policy):
    """Not registered: built by `testbed collect` around a registered policy."""

    def __init__(self, inner: Policy, epsilon: float = 0.2, spread: float = 4.0, hold: int = 4,
                 seed: int = 0) -> None:
        super().__init__(inner.params)
        self.inner, self.epsilon, self.spread, self.hold = inner, epsilon, spread, hold
        self.name = inner.name
        self.datapaths = inner.datapaths
        self.per_packet = inner.per_packet
        self.rng = np.random.default_rng(seed)
        self.factors = (1.0, 1.0)
        self.left = 0

    def queue_config(self) -> QueueConfig:
        return self.inner.queue_config()

    def on_dequeue(self, cls: str, sojourn_s: float, now: float, backlog_bytes: int):  # noqa: ANN201
        return self.inner.on_dequeue(cls, sojourn_s, now, backlog_bytes)

    def update(self, state: QueueState) -> Decision:
        decision = self.inner.update(state)
        if self.left == 0 and self.rng.random() < self.epsilon:
            span = math.log(self.spread)
            self.factors = tuple(math.exp(self.rng.uniform(-span, span)) for _ in range(2))
            self.left = self.hold
        if self.left == 0:
            return decision
        self.left -= 1
        return Decision(l4s=_scale(decision.l4s, self.factors[0]),
                        classic=_scale(decision.classic, self.factors[1]))


def _scale(d: ClassDecision, factor: float) -> ClassDecision:
    # a zero probability gets a small floor so that exploration can also try signalling
    drop = min(max(d.p_drop, 0.0) * factor, 1.0)
    mark = min(max(d.p_mark, 0.005 if factor > 1 else 0.0) * factor, 1.0 - drop)
    return replace(d, p_drop=drop, p_mark=mark)
