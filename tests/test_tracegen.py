"""The cellular-like trace generator: seeded, documented model, Mahimahi output."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.bottleneck import tracegen as tg
from orchestrator.spec import schedule as sm


def test_same_seed_same_trace_other_seed_other() -> None:
    m = tg.CellularModel()
    assert tg.generate(m, 5, 1) == tg.generate(m, 5, 1)
    assert tg.generate(m, 5, 1) != tg.generate(m, 5, 2)


def test_constant_rate_gives_exact_opportunities() -> None:
    # one level, no fading: 12 Mbit/s = 1000 packets/s = exactly one per ms
    m = tg.CellularModel(levels=(12.0,), sigma=0.0)
    ms = tg.generate(m, 2.0, 5)
    assert ms == list(range(1, 2001))
    # 6 Mbit/s: one every 2 ms
    assert tg.generate(tg.CellularModel(levels=(6.0,), sigma=0.0), 0.01, 0) == [2, 4, 6, 8, 10]


def test_period_is_the_duration() -> None:
    ms = tg.generate(tg.CellularModel(levels=(0.01,), sigma=0.0), 1.0, 0)
    assert ms[-1] == 1000  # a rate too low for any packet still ends on the period


def test_level_walk_is_a_birth_death_chain() -> None:
    m = tg.CellularModel(levels=(1.0, 2.0, 4.0, 8.0), stay=0.8, sigma=0.0)
    r = tg.rates(m, 2000, 9) / 1e6  # 20000 steps
    idx = np.searchsorted([1.0, 2.0, 4.0, 8.0], r)
    jumps = np.abs(np.diff(idx))
    assert set(np.unique(jumps)) <= {0, 1}  # only neighbours
    assert np.mean(jumps > 0) == pytest.approx(0.2, abs=0.015)  # 1 - stay
    assert idx[0] == 1  # starts in the middle (len 4 -> level 1)
    # symmetric walk on 4 levels with reflecting ends: the ends hold half the mass of the inner
    # levels (stationary 1/6, 1/3, 1/3, 1/6)
    share = np.bincount(idx, minlength=4) / idx.size
    assert share == pytest.approx([1 / 6, 1 / 3, 1 / 3, 1 / 6], abs=0.04)


def test_fading_has_mean_one() -> None:
    r = tg.rates(tg.CellularModel(levels=(10.0,), sigma=0.5), 2000, 3)
    assert r.mean() == pytest.approx(10e6, rel=0.02)
    assert r.std() > 4e6


def test_written_trace_loads(tmp_path) -> None:
    m = tg.CellularModel()
    ms = tg.generate(m, 10, 4)
    path = tg.write(tmp_path / "c.trace", ms, m, 10, 4)
    t = sm.load_mahimahi(path)
    assert t.period_ms == 10000 and t.per_period == len(ms)
    assert (tmp_path / "c.trace.json").exists()


@pytest.mark.parametrize("model, words", [
    (tg.CellularModel(levels=()), "positive rates"), (tg.CellularModel(levels=(1, -2)), "positive"),
    (tg.CellularModel(stay=1.5), "probability"), (tg.CellularModel(step_ms=0), "1 ms"),
    (tg.CellularModel(sigma=-1), "non-negative"), (tg.CellularModel(start_level=9), "0..4"),
])
def test_bad_models(model: tg.CellularModel, words: str) -> None:
    with pytest.raises(sm.ScheduleError, match=words):
        tg.generate(model, 1, 0)
