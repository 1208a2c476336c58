"""The reward: the ONE place it is defined.

    r = util - a * log(1 + d_L / l4s_ref_ms) - b * log(1 + d_C / classic_target_ms) - c * loss
          + f * fair

  util  (l4s.departure_bps + classic.departure_bps) / link_rate_bps, clipped to [0, 1]:
        what the link carried in the interval. An application-limited run cannot reach 1;
        that costs every policy the same, so it does not bias a comparison.
  d_L   l4s.sojourn_ms, mean sojourn of the L4S packets dequeued in the interval. The
        reference is 1 ms (the L4S step threshold): an L4S queue of 1 ms costs a*log 2.
  d_C   classic.sojourn_ms, against the classic target (15 ms, DualPI2's default).
  loss  (drops of both classes) / (arrivals of both classes), 0 when nothing arrived.
        CE marks are not penalised: they are the signal an L4S AQM is supposed to send.
  fair  throughput balance between the classes (issue 14, item 4), when both had arrivals in
        the interval: with s_L, s_C the classes' shares of what departed (each at least 1e-3),
            fair = (log(2 s_L) + log(2 s_C)) / 2 = log(geometric / arithmetic mean) <= 0,
        0 at equal shares, -0.29 when one class gets 5x the other, -1.6 at 99:1. It is the
        classes' proportional fairness (the sum of log throughputs) relative to an equal split:
        per-flow fairness when the classes carry as many flows each; the router sees no flow
        counts. Without it, starving the classic class scored higher than a fair DualPI2-like
        outcome (its queue and L4S delay both shrink). An idle class costs nothing.

The log makes a delay increase cost less the larger the delay already is, so a policy does
not trade all utilisation to shave the last millisecond, and neither class dominates.
Defaults (a = b = 0.2, c = 2, f = 0.5): 5 ms of L4S queue costs 0.36, 60 ms of classic queue
0.32, 5 % loss 0.10, a 5:1 split between the classes 0.15, against at most 1.0 of utilisation.

A row's reward describes the interval that *ended* at that row; it is the consequence of the
previous row's decision (dataset.py accounts for that when it computes returns-to-go).
Works on a QueueState, on a flat row dict, or on columns of a DataFrame (numpy arrays).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from policies.base import Decision, QueueState


@dataclass(frozen=True)
class RewardWeights:
    delay_l4s: float = 0.2  # a
    delay_classic: float = 0.2  # b
    loss: float = 2.0  # c
    l4s_ref_ms: float = 1.0
    classic_target_ms: float = 15.0
    fairness: float = 0.5  # f

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT = RewardWeights()


def reward_columns(cols: Mapping[str, Any], w: RewardWeights = DEFAULT) -> Any:
    """The formula over QueueState.flat() keys; scalars in, scalar out; arrays in, array out."""
    link = np.maximum(cols["link_rate_bps"], 1.0)
    util = np.clip((cols["l4s_departure_bps"] + cols["classic_departure_bps"]) / link, 0.0, 1.0)
    arrivals = np.maximum(cols["l4s_arrivals"] + cols["classic_arrivals"], 1.0)
    loss = np.clip((cols["l4s_drops"] + cols["classic_drops"]) / arrivals, 0.0, 1.0)
    d_l = np.maximum(cols["l4s_sojourn_ms"], 0.0)
    d_c = np.maximum(cols["classic_sojourn_ms"], 0.0)
    return (util - w.delay_l4s * np.log1p(d_l / w.l4s_ref_ms)
            - w.delay_classic * np.log1p(d_c / w.classic_target_ms) - w.loss * loss
            + w.fairness * fairness(cols))


def fairness(cols: Mapping[str, Any]) -> Any:
    """log(geometric / arithmetic mean) of the classes' departure shares when both had
    arrivals, else 0 (see the module docstring)."""
    x_l = np.maximum(np.asarray(cols["l4s_departure_bps"], dtype=np.float64), 0.0)
    x_c = np.maximum(np.asarray(cols["classic_departure_bps"], dtype=np.float64), 0.0)
    total = x_l + x_c
    share_l = np.clip(x_l / np.maximum(total, 1e-9), 1e-3, 1 - 1e-3)
    fair = 0.5 * (np.log(2 * share_l) + np.log(2 * (1 - share_l)))
    both = (np.asarray(cols["l4s_arrivals"]) > 0) & (np.asarray(cols["classic_arrivals"]) > 0) & (total > 0)
    return np.where(both, fair, 0.0)


def reward(state: QueueState, decision: Decision | None = None, w: RewardWeights = DEFAULT) -> float:
    """Reward of one control-loop update (signature fits ControlLoop's reward_fn)."""
    return float(reward_columns(state.flat(), w))
