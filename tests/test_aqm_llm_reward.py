"""Issue 14, item 4: the reward sees throughput fairness between the classes. Expected values
are written out with math.log here, not taken from reward.py."""

from __future__ import annotations

import math

import pytest

from policies.aqm_llm.reward import reward_columns


def _row(l4s_mbps: float, classic_mbps: float, l4s_ms: float, classic_ms: float, classic_drops: int,
         l4s_arrivals: int = 1000) -> dict[str, float]:
    return {"link_rate_bps": 100e6, "l4s_departure_bps": l4s_mbps * 1e6,
            "classic_departure_bps": classic_mbps * 1e6, "l4s_arrivals": l4s_arrivals,
            "classic_arrivals": 1000, "l4s_drops": 0, "classic_drops": classic_drops,
            "l4s_sojourn_ms": l4s_ms, "classic_sojourn_ms": classic_ms}


def _by_hand(util: float, l4s_ms: float, classic_ms: float, loss: float) -> float:
    """The reward before item 4: util - 0.2 log(1 + d_L / 1) - 0.2 log(1 + d_C / 15) - 2 loss."""
    return util - 0.2 * math.log(1 + l4s_ms) - 0.2 * math.log(1 + classic_ms / 15) - 2 * loss


def test_starving_the_classic_class_scores_below_a_fair_dualpi2_like_outcome() -> None:
    # L4S takes 95 of 100 Mbit/s with a tiny queue; the starved classic queue is short too
    starve = _row(95, 5, l4s_ms=0.3, classic_ms=5, classic_drops=1)
    # DualPI2-like: an even split, L4S at its 1 ms step, classic at its 15 ms target
    fair = _row(50, 50, l4s_ms=1.0, classic_ms=15, classic_drops=2)
    old_starve = _by_hand(1.0, 0.3, 5, 1 / 2000)
    old_fair = _by_hand(1.0, 1.0, 15, 2 / 2000)
    assert old_starve == pytest.approx(0.8890, abs=1e-4) and old_fair == pytest.approx(0.7207, abs=1e-4)
    assert old_starve > old_fair  # what the issue found: starving paid
    # fairness term: 0.5 * (log(2 * 0.95) + log(2 * 0.05)) / 2 ... weight f = 0.5
    new_starve = old_starve + 0.5 * 0.5 * (math.log(1.9) + math.log(0.1))
    assert float(reward_columns(starve)) == pytest.approx(new_starve, abs=1e-9)
    assert float(reward_columns(fair)) == pytest.approx(old_fair, abs=1e-9)  # an even split costs 0
    assert float(reward_columns(starve)) < float(reward_columns(fair)) - 0.2


def test_an_idle_class_costs_nothing() -> None:
    idle = _row(0, 100, l4s_ms=0.0, classic_ms=15, classic_drops=0, l4s_arrivals=0)
    assert float(reward_columns(idle)) == pytest.approx(_by_hand(1.0, 0.0, 15, 0.0), abs=1e-9)


# ---------------------------------------------------------------- item 3: discount per second
def test_returns_are_discounted_per_second_with_a_horizon() -> None:
    """Term by term: reward m weighs exp(-(t_m - t_{i+1}) / H) in rtg_i; the update interval
    no longer sets the horizon."""
    import numpy as np

    from policies.aqm_llm.dataset import returns_to_go

    r = np.array([9.0, 1.0, 2.0, 4.0])
    dt = np.array([0.016, 0.5, 1.5, 3.0])  # t = 0, 0.5, 2.0, 5.0 (+ the first row's interval)
    t = np.cumsum(dt)
    h = 10.0
    want = []
    for i in range(3):
        w = np.exp(-(t[i + 1:] - t[i + 1]) / h)
        want.append(float((w * r[i + 1:]).sum() / w.sum()))
    got = returns_to_go(r, gamma=0.98, dt=dt, horizon_s=h)
    assert got[:3] == pytest.approx(want, rel=1e-12) and got[3] == 4.0
    # gamma per row: at 0.98 the third reward (5 s later) would weigh as much as the first
    assert got[0] != pytest.approx(returns_to_go(r, gamma=0.98)[0])
