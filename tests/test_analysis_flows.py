"""Per-flow figures from sender and receiver pcaps of known content (written with scapy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

from orchestrator.analysis import flows
from orchestrator.analysis.pcap import read_pcap

T0 = 1_764_000_000.0
SND, RCV = "10.0.0.1", "10.0.2.2"
MSS = 1000
ONE_WAY, ACK_DELAY = 8, 4  # ms: the receiver sees data 8 ms after it left, ACKs it 4 ms later
RTT = 20  # ms: the ACK reaches the sender 8 ms after it left


def tcp_flow(n: int = 20, lost: tuple[int, ...] = (5,), spurious: tuple[int, ...] = (2,),
             ce: tuple[int, ...] = (), timestamps: bool = True, sport: int = 40000,
             seq0: int = 4_294_960_000) -> tuple[list, list]:
    """(sender capture, receiver capture) of n segments every 10 ms. Segments in `lost` are
    dropped at the bottleneck and sent again at the end; those in `spurious` are sent again
    although they arrived. Every arriving segment is ACKed ACK_DELAY later, echoing its TSval;
    each segment echoes the TSval of the last ACK the sender had. Times are whole ms so that
    expected figures are exact. The sequence numbers wrap past 2**32 on the way."""
    sent, got, acks_at_sender = [], [], []  # acks_at_sender: (arrival ms, its TSval)
    sends = [(i, i * 10) for i in range(n)] + [(i, (n + k) * 10) for k, i in enumerate(lost + spurious)]
    for k, (i, ms) in enumerate(sends):
        seq, tsval, first = (seq0 + i * MSS) % 2**32, 1000 + k, k < n
        echo = max([a for a in acks_at_sender if a[0] <= ms], default=(0, 0))[1]
        opts = [("NOP", None), ("NOP", None), ("Timestamp", (tsval, echo))] if timestamps else []
        tcp = TCP(sport=sport, dport=5201, seq=seq, ack=1, flags="PA", options=opts)
        data = Ether() / IP(src=SND, dst=RCV, tos=1) / tcp / Raw(b"d" * MSS)
        sent.append(_at(data, ms))
        if first and i in lost:
            continue
        arrived = data.copy()
        arrived[IP].tos = 3 if (i in ce and first) else 1
        got.append(_at(arrived, ms + ONE_WAY))
        ack_opts = [("NOP", None), ("NOP", None), ("Timestamp", (50_000 + k, tsval))] if timestamps else []
        ack = Ether() / IP(src=RCV, dst=SND) / TCP(sport=5201, dport=sport, seq=1, ack=(seq + MSS) % 2**32,
                                                   flags="A", options=ack_opts)
        got.append(_at(ack, ms + ONE_WAY + ACK_DELAY))
        sent.append(_at(ack.copy(), ms + RTT))
        acks_at_sender.append((ms + RTT, 50_000 + k))
    return sorted(sent, key=lambda p: p.time), sorted(got, key=lambda p: p.time)


def _at(pkt, ms: int):
    pkt.time = T0 + ms / 1000
    return pkt


def write(tmp_path: Path, name: str, pkts: list) -> pd.DataFrame:
    path = tmp_path / f"{name}.pcap"
    wrpcap(str(path), pkts)
    return read_pcap(path)


@pytest.fixture
def captured(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    sent, got = tcp_flow(ce=(0, 7, 8))
    return write(tmp_path, "snd", sent), write(tmp_path, "rcv", got)


FLOW = {"name": "a", "kind": "l4s", "ecn": "ect1", "ports": {"sport": 40000, "dport": 5201}, "proto": "tcp"}


def test_goodput_counts_each_byte_once(captured) -> None:
    tx, rx = captured
    fig = flows.analyse_flow(FLOW, rx, tx, T0, 0.1)
    assert fig.bytes == 20 * MSS  # the spurious copy is not counted, the lost one once
    first = T0 + ONE_WAY / 1e3
    last = T0 + (210 + ONE_WAY) / 1e3  # segment 5 again at 200 ms, segment 2 again at 210 ms
    assert fig.first == pytest.approx(first, abs=1e-6) and fig.last == pytest.approx(last, abs=1e-6)
    assert fig.goodput_mbps == pytest.approx(20 * MSS * 8 / (last - first) / 1e6, rel=1e-6)
    assert fig.wire_bytes == 21 * (MSS + 52)  # 19 first arrivals + 1 retransmission + 1 spurious
    assert fig.packets_received == 21


def test_retransmits_from_the_sender_capture(captured) -> None:
    tx, rx = captured
    assert flows.analyse_flow(FLOW, rx, tx, T0, 0.1).retransmits == 2


def test_rtt_from_timestamps_is_exact(captured) -> None:
    tx, rx = captured
    fig = flows.analyse_flow(FLOW, rx, tx, T0, 0.1)
    assert fig.rtt_source == "timestamps"
    assert len(fig.rtt) == 21  # every TSval that was echoed; the lost segment's never was
    assert np.allclose(fig.rtt["rtt_ms"], RTT, atol=1e-3)


def test_rtt_from_acks_leaves_out_retransmitted_segments(tmp_path: Path) -> None:
    sent, got = tcp_flow(timestamps=False)
    tx, rx = write(tmp_path, "snd", sent), write(tmp_path, "rcv", got)
    fig = flows.analyse_flow(FLOW, rx, tx, T0, 0.1)
    assert fig.rtt_source == "acks"
    # 20 first transmissions, less the two that were sent again (Karn); segments 6.. are
    # covered only by the ACK after segment 5's retransmission, so they are late samples too
    rtt = fig.rtt["rtt_ms"].to_numpy()
    assert len(rtt) == 18
    assert np.allclose(rtt[:4], RTT, atol=1e-3)  # segments 0, 1, 3, 4: the ACK right after


def test_receiver_only_rtt(captured) -> None:
    """At the receiver: an ACK leaves, the segment it clocked out echoes it one RTT less the
    ACK delay later (the sender sends as each ACK arrives)."""
    _, rx = captured
    fig = flows.analyse_flow(FLOW, rx, None, T0, 0.1)
    assert fig.retransmits is None and fig.rtt_source == "timestamps@receiver"
    assert np.median(fig.rtt["rtt_ms"]) == pytest.approx(RTT - ACK_DELAY, abs=1e-3)
    assert any("no sender pcap" in n for n in fig.notes)


def test_ecn_codepoints_at_the_receiver(captured) -> None:
    tx, rx = captured
    fig = flows.analyse_flow(FLOW, rx, tx, T0, 0.1)
    assert fig.ecn_counts == {"not_ect": 0, "ect1": 18, "ect0": 0, "ce": 3}


def test_timeseries_bins(captured) -> None:
    tx, rx = captured
    ts = flows.analyse_flow(FLOW, rx, tx, T0, 0.1).timeseries
    # arrivals at 8, 18, ..., 198 ms then 208 (seg 5 again) and 218 ms (seg 2 again)
    assert list(ts["t"]) == [0.0, 0.1, 0.2]
    per_bin = np.array([9, 10, 1]) * MSS  # bin 0: segments 0-9 less lost 5; bin 2: 5's retransmission
    assert np.allclose(ts["goodput_mbps"], per_bin * 8 / 0.1 / 1e6)
    assert np.allclose(ts["throughput_mbps"], np.array([9, 10, 2]) * (MSS + 52) * 8 / 0.1 / 1e6)


def test_udp_flow(tmp_path: Path) -> None:
    sent, got = [], []
    for i in range(50):
        p = Ether() / IP(src="10.0.1.1", dst=RCV, tos=2) / UDP(sport=50000, dport=6000) / Raw(b"u" * 500)
        sent.append(_at(p, i * 2))
        if i % 10 != 3:
            got.append(_at(p.copy(), i * 2 + ONE_WAY))
    tx, rx = write(tmp_path, "snd", sent), write(tmp_path, "rcv", got)
    flow = {"name": "u", "kind": "udp", "ecn": "ect0", "proto": "udp",
            "ports": {"sport": 50000, "dport": 6000}}
    fig = flows.analyse_flow(flow, rx, tx, T0, 0.1)
    assert fig.bytes == 45 * 500
    assert (fig.packets_sent, fig.packets_received) == (50, 45)
    assert fig.ecn_counts["ect0"] == 45
    span = (49 * 0.002) - 0.0
    assert fig.goodput_mbps == pytest.approx(45 * 500 * 8 / span / 1e6, rel=1e-6)


def test_unknown_source_port_picks_the_data_connection(captured, tmp_path: Path) -> None:
    """iperf3's control connection goes to the same port; the data connection carries more."""
    tx, rx = captured
    cookie = Ether() / IP(src=SND, dst=RCV) / TCP(sport=39999, dport=5201, flags="PA") / Raw(b"c" * 37)
    control = [_at(cookie, 1)]
    mixed = pd.concat([rx, write(tmp_path, "ctl", control)], ignore_index=True).sort_values("t")
    fig = flows.analyse_flow({**FLOW, "ports": {"dport": 5201}}, mixed, tx, T0, 0.1)
    assert fig.bytes == 20 * MSS


def test_no_ports_no_crash() -> None:
    fig = flows.analyse_flow({"name": "x"}, None, None, T0, 0.1)
    assert np.isnan(fig.goodput_mbps) and "no ports" in fig.notes[0]


def test_unwrap_and_new_bytes() -> None:
    seq = flows.unwrap(np.array([2**32 - 100, 2**32 - 50, 10, 2**32 - 50], dtype=np.uint32))
    assert list(seq) == [2**32 - 100, 2**32 - 50, 2**32 + 10, 2**32 - 50]
    fresh = flows.new_bytes(np.array([0, 100, 50, 300, 200]), np.array([100, 100, 100, 100, 100]))
    # bytes 50-149 come twice: each byte is credited once, to the lowest-starting carrier
    assert list(fresh) == [100, 50, 50, 100, 100] and fresh.sum() == 400
