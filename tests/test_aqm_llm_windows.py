"""The dataset wiring the trainer reads (policies/aqm_llm/dataset.py): windows, grid starts and
the train/validation split, each checked against a plain recomputation from the pool's rows
(no model, no torch)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from policies.aqm_llm import dataset as D
from policies.aqm_llm import features as F
from policies.aqm_llm.reward import reward_columns


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    return D.synthetic_pool(behaviours=("dualpi2",), seconds=1.0)


@pytest.fixture(scope="module")
def prepared(pool):
    return D.prepare(pool, gamma=0.9, val_frac=0.34, seed=3)


def test_episode_bounds_are_the_pools_episodes(pool, prepared):
    train, val, _ = prepared
    sizes = pool.groupby("episode", sort=False).size()
    for eps in (train, val):
        assert len(eps) == sum(int(sizes[n]) for n in eps.names) == len(eps.rtg)
        lengths = [int(e - s) for s, e in zip(eps.start, eps.end, strict=True)]
        assert lengths == [int(sizes[n]) for n in eps.names]
        assert eps.start[0] == 0 and (eps.start[1:] == eps.end[:-1]).all()


def test_a_window_holds_its_episodes_rows_in_order_then_padding(pool, prepared):
    """Each window, rebuilt by hand from the episode's own rows: the actions the rows logged,
    the rewards' discounted returns (normalised with the stats), the normalised features; past
    the episode end zeros and valid = 0, never the next episode's rows."""
    train, _, stats = prepared
    window = 6
    name = train.names[0]
    rows = pool[pool.episode == name].fillna({k: 0.0 for k in F._flat_keys()})
    n = len(rows)
    acts = D.action_targets(rows)
    r = np.asarray(reward_columns(rows), dtype=np.float64)
    feats = stats.apply(F.from_rows(rows))
    for start in (0, 7, n - 2):  # inside, and running 4 steps past the end
        b = train.gather(np.array([int(train.start[0]) + start]), window, stats)
        k = min(window, n - start)
        assert b["valid"][0].tolist() == [1.0] * k + [0.0] * (window - k)
        np.testing.assert_allclose(b["actions"][0, :k], acts[start:start + k], rtol=1e-6)
        np.testing.assert_allclose(b["scalars"][0, :k], feats.scalars[start:start + k], rtol=1e-5, atol=1e-6)
        for j in range(k):  # the discounted average of this episode's rewards after the step
            future = r[start + j + 1:]  # (the last row, with none after it: its own reward)
            w = 0.9 ** np.arange(len(future))
            rtg = float((w * future).sum() / w.sum()) if len(future) else r[-1]
            assert b["rtg"][0, j] == pytest.approx(stats.norm_rtg(np.array([rtg]))[0], rel=1e-4, abs=1e-5)
        for key in ("scalars", "series", "mask", "actions", "rtg"):
            assert not b[key][0, k:].any(), key


def test_grid_starts_step_by_window_inside_each_episode(prepared):
    train, _, _ = prepared
    every = train.grid_starts(5, 10_000)
    expect = [s for a, b in zip(train.start, train.end, strict=True) for s in range(int(a), int(b), 5)]
    assert every.tolist() == expect
    few = train.grid_starts(5, 7)
    assert len(few) == 7 and set(few.tolist()) <= set(expect)
    assert (few[0], few[-1]) == (expect[0], expect[-1])


def test_split_holds_out_a_share_of_whole_episodes_and_is_seeded(pool):
    names = list(dict.fromkeys(pool.episode))
    assert len(names) == 3
    for frac, n_val in ((0.34, 1), (0.9, 2), (0.01, 1)):  # round(frac * 3), at least 1, at most 2
        tr, va = D.split(pool, frac, seed=0)
        assert len(set(va.episode)) == n_val and set(tr.episode).isdisjoint(va.episode)
        assert len(tr) + len(va) == len(pool)
    a, b = D.split(pool, 0.34, seed=5), D.split(pool, 0.34, seed=5)
    assert a[1].equals(b[1])
    assert len({tuple(sorted(set(D.split(pool, 0.34, seed=s)[1].episode))) for s in range(10)}) > 1


def test_a_single_episode_holds_out_its_last_rows(pool):
    one = pool[pool.episode == pool.episode.iloc[0]].sample(frac=1.0, random_state=0)  # shuffled
    tr, va = D.split(one, 0.25, seed=0)
    cut = int(len(one) * 0.75)
    assert len(tr) == cut and len(va) == len(one) - cut
    assert tr.t.max() < va.t.min()  # the last quarter in time, not in row order
    assert set(va.episode) == {one.episode.iloc[0] + "#heldout"}


def test_normalisation_is_fitted_on_training_episodes_only(pool, prepared):
    train, val, stats = prepared
    # the training features come out standardised (std 1 where the raw feature varies); the
    # held-out ones are scaled with the same statistics, so they are not re-standardised
    raw_train = F.from_rows(pool[pool.episode.isin(train.names)].fillna({k: 0.0 for k in F._flat_keys()}))
    np.testing.assert_allclose(stats.scalar_mean, raw_train.scalars.mean(0), rtol=1e-5, atol=1e-6)
    varies = raw_train.scalars.std(0) > 1e-6
    assert np.allclose(train.feats.scalars[:, varies].mean(0), 0, atol=1e-4)


def test_scalar_features_are_the_documented_quantities():
    """features.py's definitions, computed here by hand for one state: log1p of counts, rates,
    bytes and delays; ratios to the link rate; the backlog in ms at the link rate."""
    from policies.base import ClassState, QueueState

    l4s = ClassState(sojourn_ms=0.5, sojourn_max_ms=2.0, head_sojourn_ms=0.7, backlog_bytes=3000,
                     backlog_pkts=2, arrival_bps=20e6, departure_bps=19e6, arrivals=40, drops=0, marks=10)
    classic = ClassState(sojourn_ms=12.0, sojourn_max_ms=20.0, head_sojourn_ms=14.0, backlog_bytes=75_000,
                         backlog_pkts=50, arrival_bps=40e6, departure_bps=30e6, arrivals=80, drops=4, marks=0)
    s = QueueState(t=3.0, dt=0.016, link_rate_bps=50e6, l4s=l4s, classic=classic)
    got = dict(zip(F.SCALAR_NAMES, F.from_state(s).scalars[0], strict=True))
    legacy = dict(zip(F.LEGACY_SCALAR_NAMES, F.from_state(s, F.LEGACY_SCALAR_NAMES).scalars[0], strict=True))
    ln = np.log1p
    assert got["log_link_rate_bps"] == pytest.approx(ln(50e6))
    assert got["zero"] == 0.0 and legacy["dt_ms"] == pytest.approx(16.0)  # dt: legacy models only
    assert {k: v for k, v in legacy.items() if k != "dt_ms"} == {k: v for k, v in got.items() if k != "zero"}
    assert got["util"] == pytest.approx(49e6 / 50e6)
    assert got["log_backlog_ms"] == pytest.approx(ln(78_000 * 8 / 50e6 * 1e3))  # 12.48 ms
    for name, c in (("l4s", l4s), ("classic", classic)):
        assert got[f"{name}_log_sojourn_ms"] == pytest.approx(ln(c.sojourn_ms))
        assert got[f"{name}_log_backlog_bytes"] == pytest.approx(ln(c.backlog_bytes))
        assert got[f"{name}_arrival_util"] == pytest.approx(c.arrival_bps / 50e6)
        assert got[f"{name}_departure_util"] == pytest.approx(c.departure_bps / 50e6)
        assert got[f"{name}_drop_frac"] == pytest.approx(c.drops / c.arrivals)
        assert got[f"{name}_mark_frac"] == pytest.approx(c.marks / c.arrivals)
        assert got[f"{name}_log_backlog_ms"] == pytest.approx(ln(c.backlog_bytes * 8 / 50e6 * 1e3))
    # the same numbers from the pool row of that state
    rows = pd.DataFrame([s.flat()])
    np.testing.assert_allclose(F.from_rows(rows).scalars[0], list(got.values()), rtol=1e-12)


def test_series_statistics_are_over_real_entries_only_and_clipped():
    """NormStats: the series mean and std count only entries the mask says are real (padding
    is not a zero observation); z-scores are clipped at +-10; a constant feature is left
    unscaled, not divided by ~0."""
    rng = np.random.default_rng(0)
    n, h = 50, F.HISTORY_LEN
    series = rng.normal(3.0, 2.0, size=(n, F.N_SERIES, h))
    mask = np.ones_like(series)
    mask[:, :, : h // 2] = 0.0  # half of every history is padding
    series *= mask
    scalars = np.tile(np.arange(F.N_SCALARS, dtype=float), (n, 1))
    scalars[:, 0] = rng.normal(0, 1, n)
    f = F.Features(scalars, series, mask)
    st = F.NormStats.fit(f, rtg=np.arange(n, dtype=float))
    real = series[:, :, h // 2:]
    np.testing.assert_allclose(st.series_mean, real.mean((0, 2)), rtol=1e-12)
    np.testing.assert_allclose(st.series_std, real.std((0, 2)), rtol=1e-12)
    assert st.scalar_std[1:] == [1.0] * (F.N_SCALARS - 1)  # constant columns
    out = st.apply(f)
    np.testing.assert_allclose(out.series[:, :, h // 2:],
                               (real - real.mean((0, 2))[None, :, None]) / real.std((0, 2))[None, :, None],
                               rtol=1e-5, atol=1e-5)
    assert not out.series[:, :, : h // 2].any()
    far = F.Features(scalars + 1e6, series, mask)
    assert np.abs(st.apply(far).scalars).max() == pytest.approx(10.0)
