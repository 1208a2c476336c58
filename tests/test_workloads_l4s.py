"""The L4S sender through a real testbed (netns provider, 50 Mbit/s, 20 ms, 1.5 BDP FIFO) with a
marking bottleneck: a tc BPF on the router's shaped egress that CE-marks ECN-capable packets
while the queue holds more than about a millisecond (workloads/stepmark.py).

From the receiver's pcap: the L4S sender's data carry ECT(1) (CE where marked), and it reacts
to the marks: its throughput stays near the link rate while its RTT stays near the base RTT.
Where the kernel accepts TCP_CONG_NEEDS_ACCECN for the BPF congestion control, the SYN asks
for AccECN (AE, CWR and ECE set) and the connection uses it.
CUBIC through the same bottleneck (Not-ECT, so never marked) fills the FIFO instead.
Retransmissions leave Not-ECT (as RFC 3168 asks), so a few Not-ECT data packets are allowed,
no more than the sender retransmitted.
Measurements skip a 2 s warm-up (slow start and the first, halving, reaction).
"""

from __future__ import annotations

import statistics

import pytest

from orchestrator import workloads
from orchestrator.analysis.pcap import AE, CWR, ECE, SYN, read_pcap
from orchestrator.experiment.capture import Capture
from orchestrator.spec.scenario import Scenario
from orchestrator.workloads import l4s, stepmark

from conftest import dumbbell_yaml, needs_root, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_root]

RATE_BPS = 50e6
BASE_RTT_MS = 20.0
WARMUP_S = 2.0
SECONDS = 8
NOT_ECT, ECT1, CE = 0, 1, 3


def one_flow(tb, out, flow: dict) -> tuple[dict, object]:
    scenario = Scenario.model_validate({"duration": f"{SECONDS}s", "flows": [flow]})
    with Capture(tb, out, points=["rx"]):
        report = workloads.run_flows(tb, scenario, out)[0]
    assert report["error"] is None, report
    rx = read_pcap(out / "pcap" / "rx-e-r1.pcap")
    data = rx[(rx.dport == report["ports"]["dport"]) & (rx.payload_len > 0)]
    return report, data


def rx_syn(tb, report: dict, out) -> int:
    rx = read_pcap(out / "pcap" / "rx-e-r1.pcap")
    syn = rx[(rx.dport == report["ports"]["dport"]) & ((rx["flags"] & SYN) > 0)]
    return int(syn["flags"].iloc[0])


def steady(report: dict, data) -> tuple[float, float]:
    """(throughput Mbit/s at the receiver, median RTT ms from the sender's samples) after warm-up."""
    t0 = report["start"] + WARMUP_S
    late = data[data.t >= t0]
    mbps = late.ip_len.sum() * 8 / (late.t.max() - late.t.min()) / 1e6
    rtts = [row[1] / 1e3 for row in report["tcp_info"] if row[0] >= t0 and row[1]]
    return mbps, statistics.median(rtts)


@pytest.fixture
def marked_dumbbell(netns_testbed):
    tb = netns_testbed(dumbbell_yaml(unique_name("wla"), rate="50mbit", rtt="20ms"))
    assert stepmark.attach(tb, step_s=0.001) == 6250  # 1 ms of queue at 50 Mbit/s
    return tb


def test_l4s_sender_sends_ect1_and_keeps_the_queue_short(marked_dumbbell, tmp_path):
    tb = marked_dumbbell
    report, data = one_flow(tb, tmp_path / "l4s", {"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx"})
    ecn = data.ecn.value_counts().to_dict()
    mbps, rtt_ms = steady(report, data)
    print(f"\nL4S: {mbps:.1f} Mbit/s, median RTT {rtt_ms:.2f} ms, codepoints {ecn}, "
          f"negotiated {report['negotiated']}")
    # both ends run it, although the testbed's routes carry congctl cubic (see ccroute.py)
    assert report["cc"] == report["raw"]["server"]["cc"] == l4s.cc_name(tb)
    assert set(ecn) <= {ECT1, CE, NOT_ECT} and ecn.get(ECT1, 0) > 0.8 * len(data)
    assert ecn.get(NOT_ECT, 0) <= report["retransmits"]  # retransmissions go Not-ECT
    assert ecn.get(CE, 0) > 0, "the bottleneck marked nothing: no reaction to test"
    assert report["negotiated"]["delivered_ce"] > 0  # the marks came back to the sender
    if "AccECN requested: True" in " ".join(report["notes"]):  # the kernel took TCP_CONG_NEEDS_ACCECN
        syn = rx_syn(tb, report, out=tmp_path / "l4s")
        assert syn & (AE | CWR | ECE) == AE | CWR | ECE, f"SYN flags {syn:#x} are not AccECN's"
        assert report["negotiated"]["accecn"]
    # Scalable response (RFC 9330 s. 2.1): a steady few marks per round trip at any rate. A
    # sender that halved on a mark, as classic ECN does, would see one mark every W/2 rounds
    # (W = 87 packets here). Seen: 5.1 marks per RTT idle, 3.6 in a full suite at load 5-6;
    # with the cut mutated to always halve (scalable_cc.bpf.c, alpha = MAX_ALPHA): 0.3.
    rounds = SECONDS * 1e3 / rtt_ms
    assert ecn.get(CE, 0) / rounds >= 1.5, f"{ecn.get(CE, 0)} marks in {rounds:.0f} rounds"
    # Throughput near the link rate: 46.6 Mbit/s idle, but 35.6 in a CI full suite (load 5-6,
    # where the shaper's bursts cross the 1 ms step more often), so the floor is 0.6.
    assert mbps >= 0.6 * RATE_BPS / 1e6
    assert rtt_ms <= BASE_RTT_MS + 5

    report, data = one_flow(tb, tmp_path / "cubic", {"name": "cubic", "kind": "tcp", "src": "s1", "dst": "rx",
                                                       "cc": "cubic", "ecn": "not-ect"})
    mbps_c, rtt_c = steady(report, data)
    print(f"CUBIC: {mbps_c:.1f} Mbit/s, median RTT {rtt_c:.2f} ms, codepoints "
          f"{data.ecn.value_counts().to_dict()}")
    assert set(data.ecn.unique()) == {0}
    assert rtt_c >= BASE_RTT_MS + 10, "CUBIC should fill the FIFO that the L4S sender kept short"
    assert rtt_c > rtt_ms + 8
