"""A toy fluid model of a DualQ bottleneck, ONLY for unit tests and quick smoke training.

It is not the testbed: real experience pools come from `testbed collect` on live namespaces.
Two queues (L served first, C guaranteed a share), aggregate windows per class that react to
the policy's decisions like DCTCP/Prague (L: -1/2 packet per mark) and Reno (C: halve one
flow per loss), an optional unresponsive UDP load in the classic queue, and noise. It emits
the same rows as the control loop (QueueState.flat + Decision.flat + reward), so the pool,
training and distillation code paths are the real ones.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd

from policies.aqm_llm.reward import reward
from policies.base import CLASSES, HISTORY_LEN, ClassState, Decision, Policy, QueueState

PKT = 1500


@dataclass(frozen=True)
class FluidScenario:
    link_mbps: float = 20.0
    rtt_ms: float = 20.0
    n_l4s: int = 1
    n_classic: int = 1
    udp_mbps: float = 0.0
    buffer_pkts: int = 1000
    seconds: float = 5.0
    rate_change: tuple[float, float] | None = None  # (at seconds, new link Mbit/s)
    c_protection: float = 0.1


def simulate(policy: Policy, sc: FluidScenario, seed: int = 0, dt: float = 0.016) -> pd.DataFrame:
    """Run `policy` closed loop for sc.seconds; one row per update."""
    rng = np.random.default_rng(seed)
    win = {"l4s": 10.0 * sc.n_l4s, "classic": 10.0 * sc.n_classic}
    queue = {c: 0.0 for c in CLASSES}
    hist: dict[str, dict[str, deque]] = {k: {c: deque(maxlen=HISTORY_LEN) for c in CLASSES}
                                         for k in ("sojourn", "rate")}
    state, rows = QueueState(t=0.0, dt=dt, link_rate_bps=sc.link_mbps * 1e6), []
    for k in range(int(sc.seconds / dt)):
        decision = policy.update(state)
        extra = getattr(policy, "log_extra", None)
        rows.append({**state.flat(), **decision.flat(), **(extra() if callable(extra) else {}),
                     "reward": reward(state)})
        link = _link_bps(sc, (k + 1) * dt)
        classes = {c: _interval(c, sc, win, queue, decision, link, dt, rng) for c in CLASSES}
        _serve(classes, queue, link, dt, sc)
        for c, cs in classes.items():
            hist["sojourn"][c].append(cs.sojourn_ms)
            hist["rate"][c].append(cs.arrival_bps)
        state = QueueState(t=(k + 1) * dt, dt=dt, link_rate_bps=link, **classes,
                           sojourn_history={c: tuple(hist["sojourn"][c]) for c in CLASSES},
                           rate_history={c: tuple(hist["rate"][c]) for c in CLASSES})
    return pd.DataFrame(rows)


def _link_bps(sc: FluidScenario, t: float) -> float:
    if sc.rate_change is not None and t >= sc.rate_change[0]:
        return sc.rate_change[1] * 1e6
    return sc.link_mbps * 1e6


def _interval(cls: str, sc: FluidScenario, win: dict, queue: dict, decision: Decision, link: float,
              dt: float, rng: np.random.Generator) -> ClassState:
    """Arrivals, AQM drops/marks and the window reaction of one class over one interval."""
    n = sc.n_l4s if cls == "l4s" else sc.n_classic
    qdelay = queue[cls] * PKT * 8 / link
    rate_pps = win[cls] / (sc.rtt_ms / 1e3 + qdelay) if n else 0.0
    if cls == "classic":
        rate_pps += sc.udp_mbps * 1e6 / (PKT * 8)
    arrivals = rng.poisson(max(rate_pps * dt, 0.0))
    d = decision.of(cls)
    step = d.step_threshold_ms is not None and qdelay * 1e3 > d.step_threshold_ms
    marked = arrivals if step else rng.binomial(arrivals, d.p_mark)
    dropped = rng.binomial(arrivals - marked, d.p_drop)
    if cls == "classic":  # classic flows here are Not-ECT: a mark is a drop (RFC 3168)
        dropped, marked = dropped + marked, 0
    overflow = max(0, int(queue["l4s"] + queue["classic"] + arrivals - dropped - sc.buffer_pkts))
    dropped += min(overflow, arrivals - dropped)
    queue[cls] += arrivals - dropped
    rtts = dt / (sc.rtt_ms / 1e3 + qdelay)
    if n:
        cut = marked / 2 if cls == "l4s" else min(dropped, n) * win[cls] / (2 * n)
        win[cls] = max(float(n), win[cls] + n * rtts - cut)
    return ClassState(arrivals=int(arrivals), drops=int(dropped), marks=int(marked),
                      arrival_bps=arrivals * PKT * 8 / dt)


def _serve(classes: dict[str, ClassState], queue: dict, link: float, dt: float, sc: FluidScenario) -> None:
    """L first, C guaranteed c_protection of the link when backlogged; fills the rest in."""
    budget = link * dt / (PKT * 8)
    c_min = min(queue["classic"], sc.c_protection * budget)
    served_l = min(queue["l4s"], budget - c_min)
    served_c = min(queue["classic"], budget - served_l)
    for cls, served in (("l4s", served_l), ("classic", served_c)):
        queue[cls] -= served
        rate = max(served / dt, 1e-9)
        sojourn = 1e3 * queue[cls] / rate if served > 0 else 0.0
        classes[cls] = dataclasses.replace(
            classes[cls], sojourn_ms=sojourn, sojourn_max_ms=1.2 * sojourn,
            head_sojourn_ms=sojourn if queue[cls] >= 1 else 0.0,
            backlog_pkts=int(queue[cls]), backlog_bytes=int(queue[cls] * PKT),
            departure_bps=served * PKT * 8 / dt)

