"""Flows start and stop on schedule: an L4S flow (the project's sender, released through stdin)
and an iperf3 CUBIC flow (started when due) with staggered starts; the first and last data
packets in the senders' and the receiver's pcaps lie within 0.5 s of the schedule."""

from __future__ import annotations

import json

import pytest

from orchestrator import workloads
from orchestrator.analysis.pcap import read_pcap
from orchestrator.experiment.capture import Capture
from orchestrator.spec.scenario import Scenario

from conftest import dumbbell_yaml, needs_root, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_root]

TOLERANCE_S = 0.5


def test_staggered_flows_start_and_stop_on_schedule(netns_testbed, tmp_path):
    tb = netns_testbed(dumbbell_yaml(unique_name("wlc")))
    scenario = Scenario.model_validate({"duration": "6s", "flows": [
        {"name": "first", "kind": "l4s", "src": "s1", "dst": "rx", "start": "0s", "duration": "3s"},
        {"name": "second", "kind": "tcp", "src": "s2", "dst": "rx", "cc": "cubic", "start": "2s",
         "duration": "3.5s"},
    ]})
    with Capture(tb, tmp_path):
        workloads.run_flows(tb, scenario, tmp_path)
    pcaps = {p.name: read_pcap(p) for p in (tmp_path / "pcap").glob("*.pcap")}
    assert set(pcaps) == {"s1-e-r1.pcap", "s2-e-r1.pcap", "rx-e-r1.pcap"}
    offsets = {}
    for name, sender in (("first", "s1-e-r1.pcap"), ("second", "s2-e-r1.pcap")):
        rep = json.loads((tmp_path / "flows" / f"{name}.json").read_text())
        for where in (sender, "rx-e-r1.pcap"):
            pk = pcaps[where]
            data = pk[(pk.dport == rep["ports"]["dport"]) & (pk.sport == rep["ports"]["sport"])
                      & (pk.payload_len > 0)]
            assert len(data) > 100, f"{name}: no data in {where}"
            offsets[(name, where)] = (round(data.t.min() - rep["scheduled_start"], 3),
                                      round(data.t.max() - rep["scheduled_end"], 3))
        assert rep["scheduled_start"] - rep["scenario_start"] == pytest.approx(scenario.flows[
            0 if name == "first" else 1].start_s, abs=1e-3)
    print(f"\n(first, last) data packet minus schedule, s: {offsets}")
    for (name, where), (start, end) in offsets.items():
        assert abs(start) <= TOLERANCE_S, f"{name} started {start:+.3f}s off schedule in {where}"
        assert abs(end) <= TOLERANCE_S, f"{name} stopped {end:+.3f}s off schedule in {where}"
