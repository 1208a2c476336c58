"""Classic flows carry the codepoint they were configured with: iperf3 CUBIC with ecn: ect0
(classic ECN, through the sender's net.ipv4.tcp_ecn=1) and with ecn: not-ect, side by side
through a real testbed, read from the receiver's pcap. The sender's tcp_ecn is put back after.

RFC 3168 sends retransmissions Not-ECT, so an ECN flow may show as many Not-ECT data packets
as it retransmitted (the FIFO tail-drops when two flows fill it)."""

from __future__ import annotations

import pytest

from orchestrator import workloads
from orchestrator.analysis.pcap import read_pcap
from orchestrator.experiment.capture import Capture
from orchestrator.spec.scenario import Scenario

from conftest import dumbbell_yaml, needs_root, unique_name

pytestmark = [pytest.mark.integration, needs_root]

NOT_ECT, ECT0 = 0, 2


def test_classic_flows_carry_the_configured_codepoint(netns_testbed, tmp_path):
    tb = netns_testbed(dumbbell_yaml(unique_name("wlb")))
    before = {h: tb.run(h, ["sysctl", "-n", "net.ipv4.tcp_ecn"]).stdout.strip() for h in ("s1", "s2")}
    scenario = Scenario.model_validate({"duration": "4s", "flows": [
        {"name": "ecn", "kind": "tcp", "src": "s1", "dst": "rx", "cc": "cubic", "ecn": "ect0"},
        {"name": "plain", "kind": "tcp", "src": "s2", "dst": "rx", "cc": "reno", "ecn": "not-ect"},
    ]})
    with Capture(tb, tmp_path, points=["rx"]):
        reports = {r["name"]: r for r in workloads.run_flows(tb, scenario, tmp_path)}
    rx = read_pcap(tmp_path / "pcap" / "rx-e-r1.pcap")
    seen = {}
    for name, rep in reports.items():
        assert rep["error"] is None, rep
        data = rx[(rx.dport == rep["ports"]["dport"]) & (rx.sport == rep["ports"]["sport"])
                  & (rx.payload_len > 0)]
        assert len(data) > 1000, f"{name}: too few data packets at the receiver"
        seen[name] = data.ecn.value_counts().to_dict()
    print(f"\ncodepoints at the receiver: {seen}; reports: "
          f"{ {n: (r['cc'], r['ecn'], r['bytes_received']) for n, r in reports.items()} }")
    assert set(seen["ecn"]) <= {ECT0, NOT_ECT}
    assert seen["ecn"].get(NOT_ECT, 0) <= reports["ecn"]["retransmits"]
    assert seen["plain"] == {NOT_ECT: sum(seen["plain"].values())}
    assert (reports["ecn"]["ecn"], reports["plain"]["ecn"]) == ("ect0", "not-ect")
    assert (reports["ecn"]["cc"], reports["plain"]["cc"]) == ("cubic", "reno")
    after = {h: tb.run(h, ["sysctl", "-n", "net.ipv4.tcp_ecn"]).stdout.strip() for h in ("s1", "s2")}
    assert after == before
