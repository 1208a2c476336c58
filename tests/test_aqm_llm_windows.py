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
        assert not b["scalars"][0, k:].any() and not b["actions"][0, k:].any() and not b["rtg"][0, k:].any()


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
