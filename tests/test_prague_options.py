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
from orchestrator.experiment.capture import Capture
from orchestrator.spec.scenario import FlowSpec, Scenario
from orchestrator.workloads import prague, tcpinfo

from conftest import needs_root, unique_name

COL = {c: i for i, c in enumerate(tcpinfo.COLUMNS)}


# ---------------------------------------------------------------- names and validation


def test_each_variant_has_its_own_name_and_decodes_back():
    assert prague.cc_name("fid1") == "l4s_fid1"  # the default: pacing only, as before
    names = {prague.cc_name("abcdefghij", bits) for bits in range(32)}
    assert len(names) == 32 and all(len(n) <= 15 for n in names)
    assert all(prague.variant(prague.cc_name("fid1", b))["ai_in_cwr"] == bool(b & 0x10) for b in range(32))
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


def run(tb, flows: list[dict], seconds: float, out, capture_at: list[str] | None = None,
        policy: str = "dualpi2") -> dict[str, dict]:
    dp = NfqueueDatapath(tb)
    dp.start(policies.make(policy, {}), out)
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
    """Goodput between t0 and t1 s after the flow started: from bytes_acked in the sender's
    tcp_info samples, or, for iperf3 (no bytes_acked), the mean of its per-second rates."""
    rows = [r for r in report["tcp_info"] if t0 <= r[COL["t"]] - report["start"] <= t1]
    first, last = rows[0], rows[-1]
    if last[COL["bytes_acked"]] is None:
        return statistics.mean(r[COL["delivery_rate_bps"]] for r in rows) / 1e6
    acked = last[COL["bytes_acked"]] - first[COL["bytes_acked"]]
    return acked * 8 / (last[COL["t"]] - first[COL["t"]]) / 1e6


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


def bursts(pcap, report: dict, t0: float) -> list[int]:
    """Lengths of the runs of data segments that left the sender less than 20 us apart."""
    data = pcap[(pcap.dport == report["ports"]["dport"]) & (pcap.payload_len > 0)]
    t = data[data.t >= report["start"] + t0].t.to_numpy()
    runs, n = [], 1
    for a, b in zip(t[:-1], t[1:], strict=True):
        if b - a < 20e-6:
            n += 1
        else:
            runs.append(n)
            n = 1
    return runs + [n]


@pytest.mark.integration
@pytest.mark.slow
@needs_root
def test_pacing_spaces_the_senders_packets(netns_testbed, tmp_path):
    """One L4S flow, 50 Mbit/s, 20 ms, DualPI2 (1 ms step). Seen at the sender's own egress (a
    20+ Gbit/s veth): paced, the kernel releases about 1 ms of data at a time (3-4 segments at
    this rate; Prague caps it at 250 us through a tso_segs hook mainline has not); ACK-clocked,
    delayed-ACK pairs and, after window increases, longer bursts (up to 6-16 seen), which the
    1 ms step marks. How much less of the link the unpaced sender gets depends on the machine's
    load (seen idle: 12-25 against 40-41 Mbit/s; seen in CI under load: 42 against 45, with the
    ACK clock itself spread by the busy CPU), so that comparison is printed, not asserted; what
    pacing guarantees is asserted: short bursts and most of the link."""
    tb = netns_testbed(yaml(unique_name("fid"), "50mbit", "20ms"))
    longest, mbps = {}, {}
    for pacing in (True, False):
        flows = [{"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx", "prague": {"pacing": pacing}}]
        out = tmp_path / f"pacing{int(pacing)}"
        reports = run(tb, flows, 8, out, capture_at=["s1"])
        runs = bursts(read_pcap(next((out / "pcap").glob("s1-*.pcap"))), reports["l4s"], 2.0)
        longest[pacing], mbps[pacing] = max(runs), rate_mbps(reports["l4s"], 2, 8)
        print(f"\npacing={pacing}: {mbps[pacing]:.1f} Mbit/s, back-to-back bursts mean "
              f"{statistics.mean(runs):.2f} longest {longest[pacing]} segments, ran {reports['l4s']['cc']}")
        assert reports["l4s"]["cc_variant"]["pacing"] is pacing
    assert longest[True] <= 6  # about 1 ms of data at the pacing rate, never a window
    assert mbps[True] > 0.7 * 50  # paced, the 1 ms step rarely catches it: most of the link


@pytest.mark.integration
@pytest.mark.slow
@needs_root
def test_low_cwnd_lets_the_window_fall_to_one_segment(netns_testbed, tmp_path):
    """One L4S flow on a 2 Mbit/s, 2 ms link: a segment takes 6 ms to serialise, so any
    packet waiting behind another is over DualPI2's 1 ms step and marked. The window is held
    at its floor: two segments by default (one always queued), or, with low_cwnd, it swings
    between one and two (half the time nothing is queued). Seen: median RTT 15.8 against
    13.4 ms, 1.72 against 1.58 Mbit/s."""
    tb = netns_testbed(yaml(unique_name("fid"), "2mbit", "2ms"))
    rtt, cwnd = {}, {}
    for low in (False, True):
        flows = [{"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx", "prague": {"low_cwnd": low}}]
        r = run(tb, flows, 8, tmp_path / f"low{int(low)}")["l4s"]
        rows = [x for x in r["tcp_info"] if x[COL["t"]] - r["start"] >= 3]
        rtt[low] = statistics.median(x[COL["rtt_us"]] for x in rows) / 1e3
        cwnd[low] = min(x[COL["cwnd"]] for x in rows)
        print(f"\nlow_cwnd={low}: median RTT {rtt[low]:.1f} ms, min cwnd {cwnd[low]}, "
              f"{rate_mbps(r, 3, 8):.2f} Mbit/s, ran {r['cc']}")
        assert r["cc_variant"]["low_cwnd"] is low
    assert cwnd[False] == 2 and cwnd[True] == 1
    assert rtt[True] < rtt[False] - 1.5  # a 6 ms packet queued less than half the time


@pytest.mark.integration
@pytest.mark.slow
@needs_root
def test_classic_ecn_detection_backs_off_behind_a_classic_aqm(netns_testbed, tmp_path):
    """An L4S flow and a CUBIC flow (Not-ECT), both 20 ms, through one PIE queue (a classic
    AQM that CE-marks ECT(1) with the classic probability) at 50 Mbit/s. A scalable sender
    reads those rare marks as a light load and takes most of the link; with detection, the
    15 ms standing queue PIE keeps tells it the bottleneck is classic, and it backs off as a
    classic flow would, so CUBIC gets a fairer share."""
    tb = netns_testbed(yaml(unique_name("fid"), "50mbit", "20ms"))
    out = {}
    for detect in (False, True):
        flows = [{"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx",
                  "prague": {"classic_ecn_detection": detect}},
                 {"name": "cubic", "kind": "tcp", "src": "s2", "dst": "rx", "cc": "cubic", "ecn": "not-ect"}]
        reports = run(tb, flows, 20, tmp_path / f"detect{int(detect)}", policy="pie")
        rates = [rate_mbps(reports["l4s"], 5, 20), rate_mbps(reports["cubic"], 5, 20)]
        out[detect] = (rates, jain(rates))
        print(f"\nclassic_ecn_detection={detect}: L4S {rates[0]:.2f} Mbit/s, CUBIC {rates[1]:.2f} Mbit/s, "
              f"Jain {jain(rates):.3f}, ran {reports['l4s']['cc']}")
        assert reports["l4s"]["cc_variant"]["classic_ecn_detection"] is detect
    assert out[True][0][1] > out[False][0][1] * 1.3
    assert out[True][1] > out[False][1]
    # behind an L4S AQM (DualPI2's L queue, 1 ms step) the standing queue stays short: no
    # fallback, the flow keeps the link as the default sender does (40-41 Mbit/s seen above)
    flows = [{"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx",
              "prague": {"classic_ecn_detection": True}}]
    alone = rate_mbps(run(tb, flows, 8, tmp_path / "l4s-aqm")["l4s"], 2, 8)
    print(f"classic_ecn_detection=True alone through DualPI2: {alone:.2f} Mbit/s")
    assert alone > 35


@pytest.mark.integration
@pytest.mark.slow
@needs_root
def test_ai_in_cwr_runs_the_variant_against_cubic(netns_testbed, tmp_path):
    """CUBIC and an L4S flow, both 10 ms, through DualPI2 at 50 Mbit/s (l4s-tests' first row,
    shortened): under the coupled marking the L4S sender is often in CWR, where the kernel
    does not call cong_avoid; growing during CWR, as Prague does, it takes a larger share.
    How much larger depends on the machine's load (idle, 3 runs: 0.49-0.62 -> 0.59-0.68; in a
    loaded full-suite run: 0.66 -> 0.67), so the shares are printed, not compared; asserted:
    the socket ran the variant asked for, and both flows shared the link."""
    tb = netns_testbed(yaml(unique_name("fid"), "50mbit", "10ms"))
    share = {}
    for ai in (False, True):
        flows = [{"name": "cubic", "kind": "tcp", "src": "s1", "dst": "rx", "cc": "cubic", "ecn": "not-ect"},
                 {"name": "l4s", "kind": "l4s", "src": "s2", "dst": "rx", "prague": {"ai_in_cwr": ai}}]
        reports = run(tb, flows, 30, tmp_path / f"ai{int(ai)}")
        rates = [rate_mbps(reports["cubic"], 8, 30), rate_mbps(reports["l4s"], 8, 30)]
        share[ai] = rates[1] / sum(rates)
        print(f"\nai_in_cwr={ai}: CUBIC {rates[0]:.2f} Mbit/s, L4S {rates[1]:.2f} Mbit/s, "
              f"L4S share {share[ai]:.2f}, ran {reports['l4s']['cc']}")
        assert reports["l4s"]["cc_variant"]["ai_in_cwr"] is ai
    assert all(0.2 < v < 0.9 for v in share.values()), share
