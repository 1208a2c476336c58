"""Capture on a real testbed: tcpdump on every sender's egress and the receiver's ingress, headers
only, listening before the flows start (the L4S flow's SYN is in every pcap) and flushed and gone
after the block, also when the block raises."""

from __future__ import annotations

import subprocess

import dpkt
import pytest

from orchestrator import workloads
from orchestrator.analysis.pcap import SYN, read_pcap
from orchestrator.experiment.capture import Capture
from orchestrator.spec.scenario import Scenario

from conftest import dumbbell_yaml, needs_root, unique_name

pytestmark = [pytest.mark.integration, needs_root]


def tcpdumps(tb) -> list[str]:
    pids = [p for h in tb.hosts.values() for p in subprocess.run(
        ["ip", "netns", "pids", tb.netns(h.name)], capture_output=True, text=True).stdout.split()]
    return [p for p in pids if open(f"/proc/{p}/comm").read().strip() == "tcpdump"]


def test_capture_defaults_snaplen_and_timing(netns_testbed, tmp_path):
    tb = netns_testbed(dumbbell_yaml(unique_name("wlp")))
    scenario = Scenario.model_validate({"duration": "2s", "flows": [
        {"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx"},
        {"name": "udp", "kind": "udp", "src": "s2", "dst": "rx", "rate": "2mbit", "packet_size": 1400}]})
    with Capture(tb, tmp_path) as cap:
        assert len(tcpdumps(tb)) == 3
        reports = {r["name"]: r for r in workloads.run_flows(tb, scenario, tmp_path)}
    assert tcpdumps(tb) == []
    assert sorted(p.name for p in (tmp_path / "pcap").iterdir()) == [
        "rx-e-r1.pcap", "s1-e-r1.pcap", "s2-e-r1.pcap"]
    print(f"\ntcpdump counts: {cap.stats}")
    assert all(s["captured"] > 0 and s["dropped"] == 0 for s in cap.stats.values())
    for name in ("rx-e-r1.pcap", "s1-e-r1.pcap"):
        pk = read_pcap(tmp_path / "pcap" / name)
        syn = pk[(pk.dport == reports["l4s"]["ports"]["dport"]) & ((pk["flags"] & SYN) > 0)]
        assert len(syn) >= 1, f"the L4S flow's SYN is missing from {name}"
    with open(tmp_path / "pcap" / "rx-e-r1.pcap", "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.snaplen == 128
        lengths = [len(buf) for _, buf in reader]
    assert max(lengths) == 128 and len(lengths) > 1000  # full-size packets were cut to 128 bytes


def test_capture_stops_when_the_block_raises(netns_testbed, tmp_path):
    tb = netns_testbed(dumbbell_yaml(unique_name("wlq")))
    with pytest.raises(RuntimeError), Capture(tb, tmp_path, points=["rx:e-r1"]):
        assert len(tcpdumps(tb)) == 1
        raise RuntimeError("boom")
    assert tcpdumps(tb) == [] and (tmp_path / "pcap" / "rx-e-r1.pcap").exists()
