"""D_SS and Jain's index against heistp/l4s-tests' s1_steady_state.go: ssDeliveryRate() keeps
the samples with tstart < t < tend, tstart = tlast - 62, tend = tstart + 60, and a nonzero
tcp_delivery_rate, and averages them; jains() is (sum)^2 / (n * sum of squares)."""

from __future__ import annotations

import pytest

from orchestrator.analysis import steady
from orchestrator.workloads import tcpinfo


def row(t: float, rate_bps: float, acked: int | None = 1) -> list:
    """A tcp_info row of the project's sender (bytes_acked set), or of iperf3 (acked None)."""
    r = [None] * len(tcpinfo.COLUMNS)
    r[tcpinfo.COLUMNS.index("t")] = t
    r[tcpinfo.COLUMNS.index("delivery_rate_bps")] = rate_bps
    r[tcpinfo.COLUMNS.index("bytes_acked")] = acked
    return r


def test_window_ends_two_seconds_before_the_last_sample_and_skips_zero_rates():
    # 100 s of samples every 0.5 s: rate 10 Mbit/s before t=45, 20 after; 0 at t=50 (no
    # estimate yet in Flent's terms); 99 Mbit/s in the last 2 s (shutdown, excluded)
    rows = [row(1000 + i / 2, 10e6 if i / 2 < 45 else 20e6) for i in range(200)]
    rows[100] = row(1050.0, 0.0)
    rows += [row(1100 + i / 2, 99e6) for i in range(4)]
    t_last = 1101.5
    tstart, tend = t_last - 62, t_last - 2
    kept = [r[3] for r in rows if tstart < r[0] < tend and r[3] != 0]
    assert steady.d_ss_mbps({"tcp_info": rows}) == pytest.approx(sum(kept) / len(kept) / 1e6)
    # by hand: 1040.0 .. 1099.0 is 119 samples less the zero; ten of them (1040-1044.5) at 10
    assert steady.d_ss_mbps({"tcp_info": rows}) == pytest.approx((10 * 10 + 108 * 20) / 118)
    assert steady.d_ss_mbps({"tcp_info": []}) is None


def test_jain_matches_the_published_row():
    # s1_table.md, 50 Mbit/s dualpi2: cubic(10ms) 12.65, prague(10ms) 34.57, Jain 0.823
    assert round(steady.jain([12.65, 34.57]), 3) == 0.823
    assert steady.jain([5.0, None, 5.0]) == 1.0 and steady.jain([None]) is None


def test_iperf_goodput_samples_keep_their_zeros():
    # iperf3 writes in bursts: 0.1 s intervals alternate 0 and 40 Mbit/s for a 20 Mbit/s flow
    rows = [row(i / 10, 40e6 if i % 2 else 0.0, acked=None) for i in range(700)]
    assert steady.d_ss_mbps({"tcp_info": rows}) == pytest.approx(20.0, rel=0.01)
