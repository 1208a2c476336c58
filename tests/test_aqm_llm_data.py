"""AQM-LLM data side: reward, features, experience pool, returns-to-go (no model, no torch)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from policies.aqm_llm import dataset as D
from policies.aqm_llm import features as F
from policies.aqm_llm.reward import DEFAULT, RewardWeights, reward, reward_columns
from policies.base import HISTORY_LEN, ClassState, QueueState
from policies.errors import PolicyError as UserError
from policies.telemetry import PartWriter


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    return D.synthetic_pool(behaviours=("dualpi2", "pie"), seconds=2.0)


def state(l4s_ms: float = 0.5, classic_ms: float = 10.0, dep_mbps: float = 50.0, drops: int = 0,
          **hist: tuple[float, ...]) -> QueueState:
    half = dep_mbps * 0.5e6
    return QueueState(t=1.0, dt=0.016, link_rate_bps=50e6,
                      l4s=ClassState(sojourn_ms=l4s_ms, departure_bps=half, arrivals=50, drops=drops),
                      classic=ClassState(sojourn_ms=classic_ms, departure_bps=half, arrivals=50),
                      sojourn_history=hist.get("sojourn", {}), rate_history=hist.get("rate", {}))


def test_reward_trades_utilisation_against_delay_and_loss():
    base = reward(state())
    assert reward(state(dep_mbps=25)) == pytest.approx(base - 0.5)
    assert reward(state(l4s_ms=5)) < base
    assert reward(state(classic_ms=60)) < base
    assert reward(state(drops=10)) == pytest.approx(base - 2.0 * 0.1)
    # a ms of L4S queue costs more than a ms of classic queue (different references)
    assert base - reward(state(l4s_ms=1.5)) > base - reward(state(classic_ms=11))


def test_reward_of_rows_equals_reward_of_states(pool):
    _, rows = next(D.episodes(pool))
    by_state = [reward(s) for s in D.states(rows)]
    assert np.allclose(reward_columns(rows), by_state)


def test_features_of_a_live_state_equal_those_rebuilt_from_rows(pool):
    for _, rows in list(D.episodes(pool))[:2]:
        from_rows = F.from_rows(rows)
        for i, s in enumerate(D.states(rows)):
            live = F.from_state(s)
            np.testing.assert_allclose(live.scalars[0], from_rows.scalars[i], rtol=1e-12)
            np.testing.assert_allclose(live.series[0], from_rows.series[i], rtol=1e-12)
            np.testing.assert_array_equal(live.mask[0], from_rows.mask[i])


def test_missing_history_at_the_start_of_a_run_is_zero_padded_and_masked():
    empty = F.from_state(state())
    assert not empty.mask.any() and not empty.series.any()
    partial = F.from_state(state(sojourn={"l4s": (1.0, 3.0)}, rate={"classic": (25e6,)}))
    assert partial.mask[0, 0].tolist() == [0.0] * (HISTORY_LEN - 2) + [1.0, 1.0]
    assert partial.series[0, 0, -2:].tolist() == pytest.approx([math.log1p(1.0), math.log1p(3.0)])
    assert partial.mask[0, 3].sum() == 1 and partial.series[0, 3, -1] == pytest.approx(0.5)
    assert partial.mask[0, 1].sum() == 0 and partial.mask[0, 2].sum() == 0
    stats = F.NormStats.fit(F.concat([empty, partial]), np.array([0.0, 1.0]))
    normed = stats.apply(partial)
    assert np.isfinite(normed.scalars).all() and (normed.series[normed.mask == 0] == 0).all()


def test_norm_stats_round_trip_and_clip(pool):
    train, val, stats = D.prepare(pool, gamma=0.9)
    again = F.NormStats.from_json(stats.to_json())
    assert again == stats
    assert abs(train.feats.scalars.mean()) < 0.1
    assert np.abs(train.feats.scalars).max() <= F.CLIP and np.abs(val.feats.series).max() <= F.CLIP
    bad = json.loads(stats.to_json())
    bad["names"] = bad["names"][:-1]
    with pytest.raises(ValueError, match="other features"):
        F.NormStats.from_json(json.dumps(bad))


def test_returns_to_go_average_the_discounted_future():
    r = np.array([5.0, 1.0, 2.0, 4.0])
    g = D.returns_to_go(r, gamma=0.5)
    assert g[3] == pytest.approx(4.0)  # no successor: its own reward
    assert g[2] == pytest.approx(4.0)
    assert g[1] == pytest.approx((2.0 + 0.5 * 4.0) / 1.5)
    assert g[0] == pytest.approx((1.0 + 0.5 * 2.0 + 0.25 * 4.0) / 1.75)  # r[0] is not its consequence


def test_split_holds_out_whole_episodes_and_targets_are_distributions(pool):
    train, val, _ = D.prepare(pool, gamma=0.9, val_frac=0.3, seed=1)
    assert set(train.names).isdisjoint(val.names) and len(val.names) >= 1
    assert np.allclose(train.actions.sum(-1), 1.0) and (train.actions >= 0).all()
    dualpi2 = pool[pool.episode.str.contains("dualpi2")]
    assert (D.action_targets(dualpi2)[:, :, 2] > 0).any()  # marks seen in the behaviour data


def test_windows_pad_past_the_episode_end(pool):
    train, _, stats = D.prepare(pool, gamma=0.9)
    last = int(train.end[0]) - 3
    b = train.gather(np.array([last]), 8, stats)
    assert b["valid"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert not b["scalars"][0, 3:].any() and not b["actions"][0, 3:].any()


def write_run(root, name: str, frame: pd.DataFrame, scenario: str) -> None:
    """A run directory as the control loop leaves it (epoch t, state t as t_rel, parts)."""
    run = root / name
    rows = frame.rename(columns={"t": "t_rel"}).assign(t=lambda f: 1.7e9 + f["t_rel"])
    writer = PartWriter(run / "telemetry" / "control", flush_rows=100)
    for row in rows.drop(columns=["episode", "scenario"]).to_dict("records"):
        writer.add(row)
    writer.close()
    (run / "manifest.json").write_text(json.dumps({"scenario": {"name": scenario}}))


def test_pool_build_from_run_directories(tmp_path, pool):
    for i, (_, rows) in enumerate(list(D.episodes(pool))[:3]):
        write_run(tmp_path / "results", f"run-{i}", rows, f"scen-{i}")
    out = D.build_pool([tmp_path / "results"], tmp_path / "pool.parquet")
    built = pd.read_parquet(out)
    assert sorted(built.episode.unique()) == ["run-0", "run-1", "run-2"]
    assert set(built.scenario) == {"scen-0", "scen-1", "scen-2"}
    assert len(built) == sum(len(r) for _, r in list(D.episodes(pool))[:3])
    first = built[built.episode == "run-0"].sort_values("t")
    assert np.allclose(F.from_rows(first).scalars, F.from_rows(next(D.episodes(pool))[1]).scalars)


def test_pool_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such pool"):
        D.load_pool([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        D.load_pool([tmp_path / "empty"])
    pd.DataFrame({"episode": ["a"], "t": [0.0]}).to_parquet(tmp_path / "thin.parquet")
    with pytest.raises(UserError, match="lack columns"):
        D.load_pool([tmp_path / "thin.parquet"])


def test_scenarios_can_be_held_out_of_the_pool(pool):
    kept = D.exclude_scenarios(pool, ["fluid-1"])
    assert "fluid-1" not in set(kept.scenario) and {"fluid-0", "fluid-2"} <= set(kept.scenario)
    with pytest.raises(UserError, match="not in the pool"):
        D.exclude_scenarios(pool, ["nope"])


def _row(**kw) -> dict:
    base = {"link_rate_bps": 50e6, "l4s_departure_bps": 25e6, "classic_departure_bps": 25e6,
            "l4s_arrivals": 1000, "classic_arrivals": 1000, "l4s_drops": 0, "classic_drops": 0,
            "l4s_sojourn_ms": 0.0, "classic_sojourn_ms": 0.0}
    return {**base, **kw}


def test_reward_clips_and_references_as_its_docstring_says():
    """reward.py: util clipped to [0, 1]; loss = drops / arrivals clipped to [0, 1] (drops of
    packets that arrived earlier can outnumber this interval's arrivals); the delay references
    are the weights' (an L4S queue of l4s_ref_ms costs a * log 2, whatever the reference)."""
    def r(w: RewardWeights = DEFAULT, **kw) -> float:
        return float(reward_columns(_row(**kw), w))

    assert r(l4s_departure_bps=40e6, classic_departure_bps=40e6) == 1.0  # equal shares: no fairness cost
    assert r(l4s_arrivals=1, classic_arrivals=0, l4s_drops=1) == pytest.approx(1 - 2)
    assert r(l4s_arrivals=2, classic_arrivals=0, l4s_drops=5) == pytest.approx(1 - 2)
    assert r(l4s_arrivals=0, classic_arrivals=0) == 1.0  # nothing arrived: no loss
    for ref in (0.5, 2.0, 4.0):
        w = RewardWeights(l4s_ref_ms=ref, classic_target_ms=10 * ref)
        assert 1.0 - r(w, l4s_sojourn_ms=ref) == pytest.approx(0.2 * math.log(2))
        assert 1.0 - r(w, classic_sojourn_ms=10 * ref) == pytest.approx(0.2 * math.log(2))
    assert RewardWeights(**DEFAULT.to_dict()) == DEFAULT
    assert DEFAULT.to_dict() == {"delay_l4s": 0.2, "delay_classic": 0.2, "loss": 2.0, "l4s_ref_ms": 1.0,
                                 "classic_target_ms": 15.0, "fairness": 0.5}
