"""Queue figures from synthetic per-packet telemetry and control parts with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import queue
from policies.telemetry import PartWriter, read

T0 = 1_764_000_000.0


def telemetry(n: int = 1000) -> pd.DataFrame:
    """L4S: n packets with sojourn k/100 ms (k = 0..n-1), 7 of them marked. Classic: n packets
    with sojourn 10 + k/10 ms, the last 3 dropped. All 1250-byte packets arriving over 1 s."""
    k = np.arange(n)
    rows = []
    for cls, sojourn in ((0, k / 100), (1, 10 + k / 10)):
        arrival = T0 + (k + 0.5) / n  # mid-slot, away from bin edges
        action = np.zeros(n, np.uint8)
        if cls == 0:
            action[[10, 20, 30, 40, 50, 60, 70]] = 2
        else:
            action[-3:] = 1
        dropped = action == 1
        rows.append(pd.DataFrame({
            "t_arrival": arrival, "t_departure": np.where(dropped, np.nan, arrival + sojourn / 1e3),
            "cls": np.full(n, cls, np.uint8), "ecn_in": np.full(n, 1 if cls == 0 else 0, np.uint8),
            "action": action, "size": np.full(n, 1250, np.uint16),
            "sojourn_ms": np.where(dropped, np.nan, sojourn).astype(np.float32),
            "src": np.uint32(1), "dst": np.uint32(2), "sport": np.uint16(3), "dport": np.uint16(4),
            "proto": np.uint8(6)}))
    return pd.concat(rows, ignore_index=True).sort_values("t_arrival", ignore_index=True)


def test_percentiles_are_exact() -> None:
    d = queue.delay_percentiles(telemetry())
    # numpy's linear interpolation over 0.00 .. 9.99 ms: p50 sits between k=499 and 500, ...
    assert d["l4s"]["p50"] == pytest.approx(4.995, abs=1e-5)
    assert d["l4s"]["p95"] == pytest.approx(9.4905, abs=1e-5)
    assert d["l4s"]["p99"] == pytest.approx(9.8901, abs=1e-5)
    assert d["l4s"]["p999"] == pytest.approx(9.98001, abs=1e-5)
    # classic: 997 departed packets with 10 + k/10 ms, k = 0..996 (the last 3 were dropped)
    assert d["classic"]["p50"] == pytest.approx(10 + 498 / 10, abs=1e-4)
    assert d["classic"]["max"] == pytest.approx(10 + 996 / 10, abs=1e-4)


def test_counts_respect_the_sample_rate() -> None:
    c = queue.counts(telemetry(), sample_rate=0.5)
    assert c["marks"] == {"l4s": 14, "classic": 0}
    assert c["drops"] == {"l4s": 0, "classic": 6}
    assert c["arrivals"] == {"l4s": 2000, "classic": 2000}
    assert c["departed_bytes"]["classic"] == 997 * 1250 * 2


def test_utilisation() -> None:
    pkts = telemetry()
    first, last = queue.window(pkts)
    assert first == T0 + 0.0005 and last == pytest.approx(T0 + 0.9965 + 109.6e-3)  # the slowest classic
    departed = (1000 + 997) * 1250 * 8
    expected = departed / (40e6 * (last - first))
    assert queue.utilisation(pkts, 40e6) == pytest.approx(expected, rel=1e-9)
    assert queue.utilisation(pkts, 40e6, sample_rate=0.5) == pytest.approx(2 * expected, rel=1e-9)
    assert math.isnan(queue.utilisation(pkts, None))


def test_delay_over_time_bins() -> None:
    ts = queue.delay_over_time(telemetry(), T0, 0.5)
    # l4s departures in [T0, T0+0.5): k = 0..499 less those whose sojourn pushes them past 0.5 s
    first_bin = telemetry().query("cls == 0 and t_departure < @T0 + 0.5")["sojourn_ms"]
    assert ts.loc[0, "l4s_delay_p50_ms"] == pytest.approx(float(np.median(first_bin)), abs=1e-5)
    assert list(ts["t"]) == [0.0, 0.5, 1.0]


def test_probability_over_time_from_control_and_packets() -> None:
    control = pd.DataFrame({"t": T0 + np.arange(10) * 0.1 + 0.01, "l4s_p_mark": np.arange(10) / 10,
                            "classic_p_drop": 0.01, "missed": [False] * 8 + [True] * 2,
                            "decide_us": np.arange(10) * 100.0})
    ts = queue.probability_over_time(telemetry(), control, T0, 0.1)
    assert np.allclose(ts["l4s_p_mark"][:10], np.arange(10) / 10)
    assert ts.loc[0, "l4s_marked_frac"] == pytest.approx(7 / 100)  # k = 10..70 of the first 100 arrivals
    assert ts.loc[9, "classic_dropped_frac"] == pytest.approx(3 / 100)
    figures = queue.control_figures(control)
    assert figures["decisions"] == 10 and figures["missed_deadlines"] == 2
    assert figures["decide_us_p50"] == pytest.approx(450.0)


def test_nothing_in_nothing_out() -> None:
    empty = pd.DataFrame()
    assert all(math.isnan(v) for v in queue.delay_percentiles(empty)["l4s"].values())
    assert queue.counts(empty)["marks"] == {"l4s": 0, "classic": 0}
    assert math.isnan(queue.utilisation(empty, 1e6))
    assert queue.delay_over_time(empty, T0, 0.1).empty
    assert queue.probability_over_time(empty, empty, T0, 0.1).empty
    assert queue.control_figures(empty)["decisions"] is None


def test_reads_what_partwriter_wrote(tmp_path: Path) -> None:
    """The analysis reads the datapaths' own telemetry writer, parts and all."""
    pkts = telemetry()
    writer = PartWriter(tmp_path, meta={"sample_rate": 1.0, "datapath": "test"})
    for part in (pkts.iloc[:700], pkts.iloc[700:1500], pkts.iloc[1500:]):
        writer.write_frame(part)
    back = read(tmp_path)
    assert len(back) == len(pkts)
    assert queue.delay_percentiles(back)["l4s"]["p99"] == pytest.approx(9.8901, abs=1e-5)


def busy_log(plan: list[tuple[float, float, int]], sample_every: int = 1) -> pd.DataFrame:
    """1000-byte packets departing evenly within each (start s, end s, count) of `plan`,
    sojourn 0; every `sample_every`-th one logged (a sampled log)."""
    t = np.concatenate([a + (np.arange(n) + 0.5) * (b - a) / n for a, b, n in plan])[::sample_every]
    n = len(t)
    return pd.DataFrame({"t_arrival": T0 + t, "t_departure": T0 + t, "cls": np.ones(n, np.uint8),
                         "ecn_in": np.zeros(n, np.uint8), "action": np.zeros(n, np.uint8),
                         "size": np.full(n, 1000, np.uint16), "sojourn_ms": np.zeros(n, np.float32)})


@pytest.mark.parametrize("sample_every", [1, 4])
def test_utilisation_over_a_long_window_is_the_mean_of_its_busy_whole_seconds(sample_every):
    """Over a window of 3 s or more: per-second utilisation, averaged over the seconds from the
    first to the last that carried at least 10% of the link, without the final partial second
    (queue.py, issue 10). 8 Mbit/s = 1000 packets of 1000 B a second: second 0 carries 2
    packets (a handshake), seconds 1-4 carry 900, 700, 900, 900, second 5 has 50 (idle
    stragglers), and the window ends at 6.5 s (a partial second of 400)."""
    plan = [(0.0, 0.01, 2), (1.0, 2.0, 900), (2.0, 3.0, 700), (3.0, 4.0, 900), (4.0, 5.0, 900),
            (5.0, 6.0, 50), (6.0, 6.5, 400)]
    log = busy_log(plan, sample_every)
    u = queue.utilisation(log, 8e6, sample_rate=1 / sample_every)
    assert u == pytest.approx((0.9 + 0.7 + 0.9 + 0.9) / 4, rel=0.01)
    # an explicit span is plain bytes over time, edges included
    span = (T0 + 1.0, T0 + 3.0)
    assert queue.utilisation(log, 8e6, 1 / sample_every, span) == pytest.approx(0.8, rel=0.01)
    # from 3 s on already (here 3.2 s: busy seconds 1-2 at 0.9, not 1902 packets / 3.2 s = 0.59)
    short = busy_log([(0.0, 0.01, 2), (1.0, 2.0, 900), (2.0, 3.0, 900), (3.0, 3.2, 100)])
    assert queue.utilisation(short, 8e6) == pytest.approx(0.9, rel=0.01)
    # nothing busy at all: the mean of every whole second
    calm = busy_log([(0.0, 4.5, 45)])
    assert queue.utilisation(calm, 8e6) == pytest.approx(0.01, rel=0.05)
