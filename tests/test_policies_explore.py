"""Exploration noise (policies/explore.py) against its documented contract: with probability
epsilon per update, the inner decision's probabilities are scaled by a log-uniform factor in
[1/spread, spread] applied to the base probability p' (L4S by the factor, classic by its square),
held for `hold` updates; an empty queue is explored at a floor on the scale of real
probabilities; everything else (queue shape, per-packet hook, name) is the inner policy's."""

from __future__ import annotations

import math

import numpy as np
import pytest

import policies
from policies.base import Action, ClassState, QueueState
from policies.explore import Explore


def calm(i: int = 0) -> QueueState:
    return QueueState(t=i * 0.016, dt=0.016, link_rate_bps=50e6)


def const(l4s_mark: float = 0.1, classic_mark: float = 0.02, classic_drop: float = 0.05):
    return policies.make("constant", {"l4s_p_mark": l4s_mark, "classic_p_mark": classic_mark,
                                      "classic_p_drop": classic_drop})


def test_epsilon_zero_is_the_inner_policy():
    inner, explored = const(), Explore(const(), epsilon=0.0)
    assert all(explored.update(calm(i)) == inner.update(calm(i)) for i in range(200))


def test_every_update_scaled_within_spread_and_held_for_hold_updates():
    """epsilon = 1: a new factor f every `hold` updates, in [1/spread, spread], log-uniform
    (mean log ~ 0, both ends reached); it scales p', so L4S probabilities by f and classic
    ones by f**2 (the coupling survives: issue 14, item 2)."""
    ex = Explore(const(), epsilon=1.0, spread=4.0, hold=3, seed=5)
    l_f, c_f = [], []
    for i in range(3000):
        d = ex.update(calm(i))
        l_f.append(d.l4s.p_mark / 0.1)
        c_f.append(d.classic.p_drop / 0.05)
    l_f, c_f = np.array(l_f), np.array(c_f)
    blocks = l_f.reshape(-1, 3)
    assert (blocks == blocks[:, :1]).all()  # held for 3 updates ...
    assert (np.diff(blocks[:, 0]) != 0).all()  # ... then redrawn
    logs = np.log(l_f[::3])
    assert logs.min() >= -math.log(4) - 1e-12 and logs.max() <= math.log(4) + 1e-12
    assert logs.min() < -0.95 * math.log(4) and logs.max() > 0.95 * math.log(4)
    assert abs(logs.mean()) < 0.06  # uniform on [-ln 4, ln 4]: sd of the mean ~0.015
    assert abs(np.mean(logs > 0) - 0.5) < 0.04
    np.testing.assert_allclose(np.log(c_f), 2 * np.log(l_f), atol=1e-9)  # classic: f**2


def test_a_perturbation_starts_with_probability_epsilon_and_lasts_hold_updates():
    ex = Explore(const(), epsilon=0.1, hold=4, seed=2)
    scaled = np.array([ex.update(calm(i)).l4s.p_mark != pytest.approx(0.1) for i in range(20000)])
    edges = np.flatnonzero(np.diff(np.r_[0, scaled.astype(int), 0]))
    runs = edges[1::2] - edges[::2]
    assert set(runs % 4) == {0}  # a held factor covers whole multiples of hold
    # a coin is tossed on each update outside a held run: starts / coins tossed = epsilon
    starts = scaled.sum() / 4
    free = len(scaled) - scaled.sum()  # coins that came up "no"
    assert starts / (starts + free) == pytest.approx(0.1, rel=0.1)


def test_an_empty_queue_is_explored_at_the_floor_and_mark_never_exceeds_what_drop_leaves():
    """Nothing signalled: p' is raised to the floor (1e-5) times f, coupled (p_L = 2 p',
    p_C = p'**2): never above 8e-5 at spread 4. A classic drop and mark scaled by f**2 keep
    drop + mark <= 1."""
    zero = Explore(const(l4s_mark=0.0, classic_mark=0.0, classic_drop=0.0), epsilon=1.0, seed=0)
    for i in range(400):
        d, f = zero.update(calm(i)), zero.factor
        assert d.l4s.p_mark == pytest.approx(2 * 1e-5 * f) and d.l4s.p_mark <= 8e-5 + 1e-12
        assert d.classic.p_mark == pytest.approx((1e-5 * f) ** 2) and d.classic.p_drop == 0.0
    big = Explore(const(l4s_mark=0.0, classic_mark=0.3, classic_drop=0.6), epsilon=1.0, seed=0)
    for i in range(400):
        d, f = big.update(calm(i)), big.factor
        drop = min(0.6 * f * f, 1.0)
        assert d.classic.p_drop == pytest.approx(drop)
        assert d.classic.p_mark == pytest.approx(min(0.3 * f * f, 1.0 - drop))


def test_shape_hook_and_identity_are_the_inner_policys():
    for name in ("dualpi2", "pie", "codel"):
        inner = policies.make(name, {})
        ex = Explore(policies.make(name, {}), epsilon=1.0)
        assert ex.queue_config() == inner.queue_config()
        assert (ex.name, ex.datapaths, ex.per_packet) == (inner.name, inner.datapaths, inner.per_packet)
    # CoDel's per-packet hook goes through: a standing 20 ms queue for 150 ms gives its drops
    codel, ex = policies.make("codel", {}), Explore(policies.make("codel", {}), epsilon=1.0)
    acts = [[p.on_dequeue("classic", 0.020, 1000 + i * 0.001, 30000) for i in range(150)]
            for p in (codel, ex)]
    assert acts[0] == acts[1] and Action.DROP in acts[0]


def test_seeded_noise_is_reproducible_and_seeds_differ():
    def trace(seed: int) -> list:
        ex = Explore(policies.make("dualpi2", {}), epsilon=0.5, seed=seed)
        c = ClassState(sojourn_ms=30, head_sojourn_ms=30, backlog_pkts=100, arrivals=50)
        return [ex.update(QueueState(t=i * 0.016, dt=0.016, link_rate_bps=50e6, l4s=c, classic=c))
                for i in range(100)]
    assert trace(1) == trace(1) and trace(1) != trace(2)
