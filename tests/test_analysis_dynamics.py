"""Per-change figures of a dynamic link, on telemetry built so every figure is known exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import dynamics
from policies.base import Action

T0 = 1000.0
BITS = 10000  # 1250-byte packets: 5000 packets/s at 50 Mbit/s, 1000 at 10 Mbit/s


def train(a: float, b: float, rate: float, sojourn_ms, cls: int = 1) -> pd.DataFrame:
    """Packets leaving at `rate` during [a, b) (mid-slot times, so none sits on a bin edge)."""
    pps = rate / BITS
    t = a + (np.arange(int(round((b - a) * pps))) + 0.5) / pps
    soj = np.asarray(sojourn_ms(t) if callable(sojourn_ms) else np.full(t.size, sojourn_ms), np.float64)
    return pd.DataFrame({"t_arrival": T0 + t - soj / 1e3, "t_departure": T0 + t, "cls": np.uint8(cls),
                         "ecn_in": np.uint8(0), "action": np.uint8(Action.ENQUEUE),
                         "size": np.uint16(BITS // 8), "sojourn_ms": soj.astype(np.float32)})


CAP = [(0.0, 50e6), (10.0, 10e6), (20.0, 50e6)]
CHANGES = [(10.0, 50e6, 10e6), (20.0, 10e6, 50e6)]


def step_run() -> pd.DataFrame:
    parts = [train(0, 10, 50e6, 2.0),
             # after the drop: 100 ms until 11.0 s, then 10 ms (target 15): drained at 11.0
             train(10, 20, 10e6, lambda t: np.where(t < 11.0, 100.0, 10.0)),
             train(10.5, 10.501, 10e6, 3.0, cls=0).assign(t_departure=T0 + 10.5),
             # after the rise: 0.35 s still at 10 Mbit/s, then at 50
             train(20, 20.35, 10e6, 1.0), train(20.35, 30, 50e6, 1.0)]
    dropped = train(10.2, 10.3, 10e6, 0.0).assign(action=np.uint8(Action.DROP), t_departure=np.nan,
                                                  sojourn_ms=np.nan)
    return pd.concat([*parts, dropped], ignore_index=True)


def test_drop_and_rise_figures() -> None:
    out = dynamics.analyse(CAP, CHANGES, step_run(), T0, 30.0, target_ms=15.0)
    drop, rise = out["changes"]
    assert drop["kind"] == "drop" and drop["from_mbps"] == 50 and drop["to_mbps"] == 10
    assert drop["peak_delay_ms"] == {"l4s": pytest.approx(3.0), "classic": pytest.approx(100.0)}
    assert drop["drain_s"] == pytest.approx(1.0) and drop["drained"] is True
    # bin [20.3, 20.4): 0.05 s at 10 + 0.05 s at 50 Mbit/s = 60%; [20.4, 20.5) is full
    assert rise["kind"] == "rise"
    assert rise["recovery_s"] == pytest.approx(0.5) and rise["recovered"] is True
    iv = out["intervals"]
    assert [(i["t0"], i["t1"]) for i in iv] == [(0, 10), (10, 20), (20, 30)]
    assert [i["capacity_mbps"] for i in iv] == pytest.approx([50, 10, 50])
    assert iv[0]["utilization"] == pytest.approx(1.0, abs=1e-3)
    assert iv[1]["utilization"] == pytest.approx(1.0, abs=2e-3)  # + the one L4S packet
    assert iv[2]["utilization"] == pytest.approx(486 / 500, abs=1e-3)
    assert out["utilization"] == pytest.approx(1086 / 1100, abs=1e-3)
    assert out["capacity_mean_mbps"] == pytest.approx(1100 / 30)


def test_never_drained_is_a_lower_bound() -> None:
    pkts = pd.concat([train(0, 10, 50e6, 2.0), train(10, 20, 10e6, 150.0)], ignore_index=True)
    drop = dynamics.analyse(CAP[:2], CHANGES[:1], pkts, T0, 20.0)["changes"][0]
    assert drop["drained"] is False and drop["drain_s"] == pytest.approx(10.0)
    assert drop["target_ms"] == 15.0


def test_never_over_target_drains_at_once() -> None:
    pkts = pd.concat([train(0, 10, 50e6, 2.0), train(10, 20, 10e6, 14.0)], ignore_index=True)
    drop = dynamics.analyse(CAP[:2], CHANGES[:1], pkts, T0, 20.0)["changes"][0]
    assert drop["drain_s"] == 0.0 and drop["drained"] is True


def test_target_is_used() -> None:
    pkts = pd.concat([train(0, 10, 50e6, 2.0), train(10, 20, 10e6, 14.0)], ignore_index=True)
    drop = dynamics.analyse(CAP[:2], CHANGES[:1], pkts, T0, 20.0, target_ms=5.0)["changes"][0]
    assert drop["drained"] is False


def test_never_recovered() -> None:
    pkts = pd.concat([train(0, 10, 10e6, 1.0), train(10, 20, 40e6, 1.0)], ignore_index=True)
    rise = dynamics.analyse([(0, 10e6), (10, 50e6)], [(10.0, 10e6, 50e6)], pkts, T0, 20.0)["changes"][0]
    assert rise["recovered"] is False and rise["recovery_s"] == pytest.approx(10.0)
    assert dynamics.analyse([(0, 10e6), (10, 50e6)], [(10.0, 10e6, 50e6)], pkts, T0,
                            20.0)["intervals"][1]["utilization"] == pytest.approx(0.8, abs=1e-3)


def test_sampled_telemetry_scales_bytes() -> None:
    pkts = train(0, 10, 50e6, 1.0).iloc[::4]
    out = dynamics.analyse([(0, 50e6)], [], pkts, T0, 10.0, sample_rate=0.25)
    assert out["utilization"] == pytest.approx(1.0, abs=1e-3)
    assert out["intervals"][0]["utilization"] == pytest.approx(1.0, abs=1e-3)


def test_trace_intervals() -> None:
    pkts = train(0, 2.5, 10e6, 1.0)
    out = dynamics.analyse([(0, 10e6), (1.0, 20e6)], [], pkts, T0, 2.5, trace_interval_s=1.0)
    assert [(i["t0"], i["t1"]) for i in out["intervals"]] == [(0, 1), (1, 2), (2, 2.5)]
    assert [i["utilization"] for i in out["intervals"]] == pytest.approx([1.0, 0.5, 0.5], abs=2e-3)
    assert out["changes"] == []


def test_capacity_schedule_folds_early_and_equal_times() -> None:
    cap = dynamics.capacity_schedule([(-0.5, 5e6), (0.0, 7e6), (2.0, 1e6), (2.0, 3e6)])
    assert cap.value_at(0) == 7e6 and cap.value_at(2) == 3e6
    cap = dynamics.capacity_schedule([(1.0, 4e6)])
    assert cap.value_at(0) == 4e6


def test_just_over_target_counts_as_over() -> None:
    # 20 ms (over a 15 ms target, under twice it) for 1 s, then 10 ms: drained after 1 s
    pkts = pd.concat([train(0, 10, 50e6, 2.0),
                      train(10, 20, 10e6, lambda t: np.where(t < 11.0, 20.0, 10.0))], ignore_index=True)
    drop = dynamics.analyse(CAP[:2], CHANGES[:1], pkts, T0, 20.0)["changes"][0]
    assert drop["drain_s"] == pytest.approx(1.0) and drop["drained"] is True


def test_run_record_round_trip(tmp_path) -> None:
    """The capacity record the datapaths write, read back into per-change figures with times
    since the scenario's start (t0_epoch), and the policy's target used for the drain."""
    import json

    tel = tmp_path / "telemetry"
    tel.mkdir()
    (tel / "capacity.json").write_text(json.dumps({
        "kind": "steps", "t0_epoch": T0, "steps": [[T0 + t, r] for t, r in CAP],
        "changes": [list(c) for c in CHANGES], "late_ms_p99": 4.2}))
    cap = dynamics.read_capacity(tmp_path)
    out = dynamics.of_run(cap, step_run(), 30.0, {"target_ms": 20.0})
    assert out["target_ms"] == 20.0 and out["late_ms_p99"] == 4.2
    assert out["changes"][0]["drain_s"] == pytest.approx(1.0)
    assert dynamics.target_of({}) == 15.0 and dynamics.target_of({"target_ms": True}) == 15.0
    series = dynamics.capacity_series(cap, T0 - 2.0, np.array([0.0, 12.5, 21.9]))
    assert series.tolist() == [50.0, 10.0, 10.0]  # 2 s before the scenario: the first rate
    (tel / "capacity.json").write_text("{}")
    assert dynamics.read_capacity(tmp_path) == {}
