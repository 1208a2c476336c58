"""The anchor of the anchored head: DualPI2's own base probability p', run beside the model.

Why (issue 14): a model that predicts p' outright must infer from a short context what a PI
controller holds in its integrator, the sum of every past queue error. It cannot see it, so
its p' wanders, and on held-out links it kept them 14% emptier than DualPI2. The anchored
head (`action: anchored`, anchored.py) is handed that integrator instead: the policy runs
DualPI2's PI update on the same queue it sees (this module), gives the model log10 p'_A as a
feature, and the model outputs a bounded correction, p' = p'_A * 10^(D tanh d). A correction
of 0 is DualPI2, so what the model learns is where and by how much to depart from it
(residual policy learning, Silver et al. 2018; Johannink et al. 2019).

The integrator sees only the queue, never what was applied: p'_A is a function of the queue
delays alone, so replaying it offline over a pool's rows (`series`) gives exactly what the
live policy computes over the same states (`Anchor.update`), whatever behaviour ran.

Arithmetic: RFC 9332 App. A.1 in floats with Linux's defaults (policies/dualpi2.py, float
mode): p' += alpha (qdelay - target) + beta (qdelay - qdelay_old), qdelay the larger head age
of the two queues. A behaviour whose tick is not DualPI2's 16 ms (PIE 15, PI2 30) gets the
integral term scaled by dt / 16 ms, so the anchor integrates the same error per second.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from policies.base import QueueState
from policies.dualpi2 import DualPi2Params

_P = DualPi2Params(arithmetic="float")
ALPHA, BETA = _P.alpha, _P.beta  # Hz
TARGET_S, TUPDATE_S = _P.target_ms / 1e3, _P.tupdate_ms / 1e3
LOG10_FLOOR = -8.0  # log10 of a zero p' (coupled.LOG10_MIN)


def step(p: float, qdelay_s: float, qdelay_old_s: float, dt_s: float) -> float:
    """One PI update of p' in [0, 1]; dt_s <= 0 counts as one DualPI2 tick."""
    scale = dt_s / TUPDATE_S if dt_s > 0 else 1.0
    p += ALPHA * scale * (qdelay_s - TARGET_S) + BETA * (qdelay_s - qdelay_old_s)
    return min(max(p, 0.0), 1.0)


def to_log(p: float) -> float:
    """log10 p' as the model sees it: LOG10_FLOOR for 0."""
    return math.log10(p) if p > 10.0 ** LOG10_FLOOR else LOG10_FLOOR


class Anchor:
    """DualPI2's p' over live states, one update per control-loop tick."""

    def __init__(self) -> None:
        self.p, self.qdelay_old = 0.0, 0.0

    def update(self, state: QueueState) -> float:
        """log10 p' after this state's update."""
        qdelay = max(state.classic.head_sojourn_ms, state.l4s.head_sojourn_ms) / 1e3
        self.p = step(self.p, qdelay, self.qdelay_old, state.dt)
        self.qdelay_old = qdelay
        return to_log(self.p)


def series(rows: pd.DataFrame) -> np.ndarray:
    """log10 p' of the anchor at each row of ONE episode in time order, as Anchor.update
    gives it over the same states."""
    q = np.maximum(rows["classic_head_sojourn_ms"].fillna(0.0).to_numpy(np.float64),
                   rows["l4s_head_sojourn_ms"].fillna(0.0).to_numpy(np.float64)) / 1e3
    dt = rows["dt"].fillna(0.0).to_numpy(np.float64)
    out, p, q_old = np.empty(len(rows)), 0.0, 0.0
    for i in range(len(rows)):
        p = step(p, float(q[i]), q_old, float(dt[i]))
        q_old = float(q[i])
        out[i] = to_log(p)
    return out
