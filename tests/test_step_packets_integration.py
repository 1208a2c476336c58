"""DualPI2's step in packets (tc `step_thresh Np`) through a real bottleneck, where it matters:
at 2 Mbit/s a full-size packet takes 6 ms to serialise, so a 1 ms step marks every L4S packet
that waits behind another, and the scalable sender is held at its two-segment floor, unable to
keep the link busy on a 10 ms path. A step of 3 packets lets it keep a few packets queued."""

from __future__ import annotations

import json

import pytest

import policies
from orchestrator import workloads
from orchestrator.bottleneck.nfqueue import NfqueueDatapath
from orchestrator.spec.scenario import FlowSpec
from orchestrator.workloads.tcpinfo import COLUMNS

from conftest import dumbbell_yaml, needs_root, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_root]


def goodput_mbps(report: dict, t0: float) -> float:
    t, acked = COLUMNS.index("t"), COLUMNS.index("bytes_acked")
    rows = [r for r in report["tcp_info"] if r[t] - report["start"] >= t0]
    return (rows[-1][acked] - rows[0][acked]) * 8 / (rows[-1][t] - rows[0][t]) / 1e6


def test_a_step_in_packets_keeps_a_slow_link_busy(netns_testbed, tmp_path):
    tb = netns_testbed(dumbbell_yaml(unique_name("fid"), rate="2mbit", rtt="10ms", buffer="100"))
    got = {}
    for args in ({}, {"step_thresh_pkts": 3}):
        out = tmp_path / ("pkts" if args else "time")
        dp = NfqueueDatapath(tb)
        dp.start(policies.make("dualpi2", args), out)
        try:
            workloads.run_flows(tb, [FlowSpec(name="l4s", kind="l4s", src="s1", dst="rx")], out, 10)
        finally:
            counters = dp.stop()
        report = json.loads((out / "flows" / "l4s.json").read_text())
        got[bool(args)] = goodput_mbps(report, 3.0)
        print(f"\n{args or 'step 1 ms'}: {got[bool(args)]:.2f} Mbit/s, step marks {counters['step_marks']}")
    assert got[False] < 1.7 and got[True] > 1.8  # seen: 1.57 and 1.89 Mbit/s
