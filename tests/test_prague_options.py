"""The Prague-like options of the BPF L4S sender (workloads/prague.py, bpf/scalable_cc.bpf.c):
each switch, its name in the flow's results, and its effect through a real bottleneck.

The effects are measured from the senders' own tcp_info samples (bytes acked over a window,
RTT, cwnd) and, for pacing, from a capture at the sender's egress; every run goes through the
nfqueue link with DualPI2 (sch_dualpi2's arithmetic and step) as the bottleneck.
"""

from __future__ import annotations

import json
import statistics

import pytest

import policies
from orchestrator import workloads
from orchestrator.analysis.pcap import read_pcap
from orchestrator.bottleneck.nfqueue import NfqueueDatapath
from orchestrator.capture import Capture
from orchestrator.scenario import FlowSpec, Scenario
from orchestrator.workloads import prague

from conftest import needs_root, unique_name

COL = {c: i for i, c in enumerate(["t", "rtt_us", "cwnd", "delivery_rate_bps", "total_retrans",
                                   "bytes_acked", "ca_state", "delivered", "delivered_ce", "min_rtt_us",
                                   "pacing_rate_bps", "snd_ssthresh", "unacked"])}


# ---------------------------------------------------------------- names and validation


def test_each_variant_has_its_own_name_and_decodes_back():
    assert prague.cc_name("fid1") == "l4s_fid1"  # the default: pacing only, as before
    names = {prague.cc_name("abcdefghij", bits) for bits in range(8)}
    assert len(names) == 8 and all(len(n) <= 15 for n in names)
    opts = prague.PragueOptions(rtt_independence=True, pacing=False, low_cwnd=True)
    name = prague.cc_name("fid1", opts.bits)
    assert name == "l4s5_fid1"
    v = prague.variant(name)
    assert (v["kind"], v["rtt_independence"], v["pacing"], v["low_cwnd"]) == ("scalable", True, False, True)
    assert prague.variant("l4s_fid1")["pacing"] and not prague.variant("l4s_fid1")["rtt_independence"]
    assert prague.variant("prague")["kind"] == "prague" and prague.variant("cubic")["kind"] == "other"


def test_prague_options_are_checked_in_the_scenario():
    flow = {"name": "a", "kind": "l4s", "src": "s1", "dst": "rx"}
    Scenario.model_validate({"flows": [{**flow, "prague": {"rtt_independence": True}}]})
    for bad in ({**flow, "prague": {"rtt_indep": True}}, {**flow, "kind": "tcp", "prague": {}},
                {**flow, "cc": "prague", "prague": {"pacing": True}}):
        with pytest.raises(ValueError):
            Scenario.model_validate({"flows": [bad]})


# ---------------------------------------------------------------- effects


def yaml(name: str, rate: str, rtt: str, s2_delay: str = "0ms") -> str:
    return (f"name: {name}\nhosts:\n  - {{name: s1, role: sender}}\n  - {{name: s2, role: sender}}\n"
            f"  - {{name: r1, role: router}}\n  - {{name: rx, role: receiver}}\nlinks:\n"
            f"  - {{a: s1, b: r1}}\n  - {{a: s2, b: r1, delay: {s2_delay}}}\n"
            f"  - {{a: r1, b: rx, bottleneck: {{rate: {rate}, rtt: {rtt}, buffer: 1000}}}}\n")


def run(tb, flows: list[dict], seconds: float, out, capture_at: list[str] | None = None) -> dict[str, dict]:
    dp = NfqueueDatapath(tb)
    dp.start(policies.make("dualpi2", {}), out)
    specs = [FlowSpec.model_validate(f) for f in flows]
    try:
        if capture_at:
            with Capture(tb, out, points=capture_at):
                workloads.run_flows(tb, specs, out, seconds)
        else:
            workloads.run_flows(tb, specs, out, seconds)
    finally:
        dp.stop()
    reports = {f["name"]: json.loads((out / "flows" / f"{f['name']}.json").read_text()) for f in flows}
    for r in reports.values():
        assert r["error"] is None, r
    return reports


def rate_mbps(report: dict, t0: float, t1: float) -> float:
    """Goodput between t0 and t1 s after the flow started, from bytes_acked in tcp_info."""
    rows = [r for r in report["tcp_info"] if t0 <= r[COL["t"]] - report["start"] <= t1]
    first, last = rows[0], rows[-1]
    return (last[COL["bytes_acked"]] - first[COL["bytes_acked"]]) * 8 / (last[COL["t"]] - first[COL["t"]]) / 1e6


def jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


@pytest.mark.integration
@pytest.mark.slow
@needs_root
def test_rtt_independence_shares_more_evenly_between_10_and_40_ms(netns_testbed, tmp_path):
    """Two L4S flows, 10 ms and 40 ms base RTT (15 ms of access-link delay each way on s2),
    through a 50 Mbit/s DualPI2 bottleneck. Without RTT independence the 10 ms flow takes
    most of the link (the same marks give the same window, so rate goes as 1/RTT); with it,
    after Prague's 500 rounds (5 s at 10 ms), the 10 ms flow grows by (10/25)^2 of a segment
    per RTT and the two share more evenly."""
    tb = netns_testbed(yaml(unique_name("fid"), "50mbit", "10ms", s2_delay="15ms"))
    seconds, window = 30, (12, 28)
    out = {}
    for indep in (False, True):
        opts = {"rtt_independence": indep}
        flows = [{"name": "short", "kind": "l4s", "src": "s1", "dst": "rx", "prague": opts},
                 {"name": "long", "kind": "l4s", "src": "s2", "dst": "rx", "prague": opts}]
        reports = run(tb, flows, seconds, tmp_path / f"indep{int(indep)}")
        rates = [rate_mbps(reports[n], *window) for n in ("short", "long")]
        out[indep] = (rates, jain(rates), reports["short"]["cc_variant"])
        print(f"\nrtt_independence={indep}: 10 ms {rates[0]:.2f} Mbit/s, 40 ms {rates[1]:.2f} Mbit/s, "
              f"Jain {jain(rates):.3f}, ran {reports['short']['cc']}")
    assert out[False][2]["rtt_independence"] is False and out[True][2]["rtt_independence"] is True
    assert out[True][1] > out[False][1] + 0.05
    assert out[True][0][0] / out[True][0][1] < out[False][0][0] / out[False][0][1]
