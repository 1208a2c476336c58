"""Issue 14, item 2: exploration in p' space with a floor on the scale of real probabilities,
an explore flag per row, per-packet behaviours labelled with what they did. Checked against
DualPI2's own decisions and hand arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import policies
from policies.aqm_llm import dataset as D
from policies.base import QueueState
from policies.explore import Explore


def _empty() -> QueueState:
    return QueueState(t=0.0, dt=0.016, link_rate_bps=1e8)


def test_exploration_at_an_empty_queue_stays_on_the_scale_of_real_probabilities() -> None:
    ex = Explore(policies.make("dualpi2", {}), epsilon=1.0, seed=3)
    signals = []
    for _ in range(400):
        d = ex.update(_empty())
        assert ex.log_extra()["explore"] == 1.0
        signals += [d.l4s.p_drop + d.l4s.p_mark, d.classic.p_drop + d.classic.p_mark]
    assert max(signals) < 1e-4 and max(signals) > 0  # explored, but at DualPI2's scale


def test_exploration_scales_the_base_probability_so_coupling_survives() -> None:
    ref = policies.make("dualpi2", {"arithmetic": "float"})
    ref.prob = 0.01  # p_C = 1e-4, p_L = 0.02
    ex = Explore(ref, epsilon=1.0, seed=5)
    ex.inner.update = lambda state: ref.decision()  # hold p' where it is
    for _ in range(20):
        d = ex.update(_empty())
        p_l, p_c = d.l4s.p_mark, d.classic.p_mark
        assert p_l == pytest.approx(2 * math.sqrt(p_c), rel=1e-9)  # one factor for both classes
        assert 0.01 / 4 <= math.sqrt(p_c) <= 0.01 * 4


def test_explore_flag_is_a_pool_column() -> None:
    pool = D.synthetic_pool(("dualpi2",), seconds=1.0, epsilon=0.5)
    assert "explore" in pool and 0 < pool["explore"].mean() < 1
    eps, _ = D.to_episodes(pool, gamma=0.98)
    assert eps.explore is not None and eps.explore.sum() == pool["explore"].sum()


def test_per_packet_behaviours_are_labelled_with_what_they_did() -> None:
    """CoDel returns empty decisions: its rows are labelled with the next interval's drops
    and marks over arrivals, per class."""
    rows = pd.DataFrame({"t": [0.0, 1.0, 2.0], "classic_arrivals": [50, 100, 200],
                         "classic_drops": [0, 2, 1], "classic_marks": [0, 0, 0],
                         "l4s_arrivals": [10, 40, 0], "l4s_drops": [0, 0, 0], "l4s_marks": [1, 4, 0],
                         **{c: [0.0] * 3 for c in D.ACTION_COLS}})
    rows["episode"] = "20261203-091433-codel-nfqueue"
    acts = D.action_targets(rows)
    assert acts[0, 1, 1] == pytest.approx(2 / 100) and acts[1, 1, 1] == pytest.approx(1 / 200)
    assert acts[0, 0, 2] == pytest.approx(4 / 40) and acts[1, 0, 2] == 0.0  # no arrivals: 0
    assert acts[2, 1, 1] == pytest.approx(1 / 200)  # the last row: its own interval
    # a behaviour that acts through its decisions keeps them
    rows["episode"] = "20261203-091433-dualpi2-nfqueue"
    assert np.all(D.action_targets(rows)[:, :, 1:] == 0)


def test_the_control_loop_logs_the_explore_flag(tmp_path) -> None:
    from orchestrator.bottleneck.control import ControlLoop
    from policies import telemetry

    ex = Explore(policies.make("dualpi2", {}), epsilon=0.5, seed=1)
    loop = ControlLoop(ex, tupdate_s=0.016, log_dir=tmp_path / "control", deadline_s=10.0)
    flags = []
    for i in range(50):
        loop.step(_empty(), 1.7e9 + i * 0.016)
        flags.append(float(ex.exploring))
    loop.close()
    rows = telemetry.read(tmp_path / "control")
    assert rows["explore"].tolist() == flags and 0 < sum(flags) < 50
    assert set(rows["per_packet"]) == {0.0}


def test_explored_rows_of_an_old_pool_are_those_that_break_the_behaviours_rule() -> None:
    """Pools collected before the explore column: the old exploration scaled the classes by
    independent factors (and raised a zero to 0.005 x factor)."""
    p = 0.01
    pairs = [(0.0, 0.0, 0),  # nothing signalled
             (0.02, 0.02, 0),  # PIE: the same p for both classes
             (2 * p, p * p, 0),  # DualPI2 / PI2: p_L = 2 sqrt(p_C)
             (1.0, 0.3, 0),  # overload: L marks everything
             (0.0, 0.005 * 3.14, 1),  # the old floor, classic only (a row of the shipped pool)
             (0.0065, 0.0157, 1),  # the old floor in both classes, different factors
             (2 * p * 1.5, p * p * 0.7, 1)]  # DualPI2 with independent factors
    rows = pd.DataFrame({"l4s_p_mark": [a for a, _, _ in pairs], "classic_p_mark": [b for _, b, _ in pairs],
                         "l4s_p_drop": 0.0, "classic_p_drop": 0.0, "t": np.arange(len(pairs), dtype=float),
                         "episode": "20261203-091433-dualpi2-nfqueue"})
    assert D.explored_rows(rows).tolist() == [float(e) for _, _, e in pairs]
    assert D.explored_rows(rows.assign(explore=0.0)).tolist() == [0.0] * len(pairs)  # the flag wins


def test_skipping_explored_steps_keeps_them_out_of_the_targets() -> None:
    import torch

    from policies.aqm_llm.train import _Run

    run = _Run.__new__(_Run)
    valid = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # gather's weight: valid, times AWR's if any
    b = {"valid": valid, "weight": valid, "explore": torch.tensor([[0.0, 1.0, 0.0, 0.0]])}
    run.learn_explored = True
    assert run.targets(b).tolist() == [[1.0, 1.0, 1.0, 0.0]]
    run.learn_explored = False
    assert run.targets(b).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    b["weight"] = valid * torch.tensor([[2.0, 3.0, 0.5, 7.0]])  # advantage weights (value.py)
    assert run.targets(b).tolist() == [[2.0, 0.0, 0.5, 0.0]]
