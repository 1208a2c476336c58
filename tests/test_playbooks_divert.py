"""The FreeBSD divert datapath's process (orchestrator/bottleneck/divert.py), driven on Linux through a
UDP socket in place of the divert(4) socket: same recvfrom/sendto contract (a packet goes back
to the address it came from), real link, policy, control loop and telemetry. divert(4) itself
needs a FreeBSD host (see playbooks/README.md)."""

from __future__ import annotations

import json
import socket
import struct
import threading

import dpkt
from scapy.all import IP, TCP, UDP, Raw, wrpcap

from orchestrator.bottleneck.divert import DivertProcess

RATE = 4e6
SIZE = 1000  # IP bytes; the link counts 14 more (Ethernet header), as HTB does
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux asm-generic value (and SCM_ type)


def packet(seq: int) -> bytes:
    """Built by scapy, checksums included: odd ids UDP with ECT(1) (-> L), even ids TCP with
    ECT(0) (-> C), SIZE bytes each."""
    ip = IP(id=seq, tos=1 if seq % 2 else 2, ttl=64, src="10.0.1.1", dst="10.0.3.2")
    if seq % 2:
        pkt = ip / UDP(sport=5000, dport=5001) / Raw(bytes(SIZE - 28))
    else:
        tcp = TCP(sport=5002, dport=5003, seq=seq * 960, ack=1, flags="A", window=512)
        pkt = ip / tcp / Raw(bytes(SIZE - 40))
    return bytes(pkt)


def recv_stamped(sock: socket.socket) -> tuple[bytes, float]:
    """A datagram and the kernel's receive time (SO_TIMESTAMPNS), not when this thread ran."""
    data, anc, _, _ = sock.recvmsg(65535, 256)
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", cdata[:16])
            return data, sec + nsec * 1e-9
    raise AssertionError("no SO_TIMESTAMPNS")


def checksums_from_pcap(path) -> list[tuple[bool, bool]]:
    """(IPv4 header checksum valid, TCP/UDP checksum valid) per packet, recomputed by dpkt
    from a pcap: dpkt fills a zeroed checksum field when it packs."""
    out = []
    with open(path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ip.IP(buf)
            ip_sum, l4_sum = ip.sum, ip.data.sum
            ip.sum = 0
            ip.data.sum = 0
            again = dpkt.ip.IP(bytes(ip))
            out.append((again.sum == ip_sum, again.data.sum == l4_sum))
    return out


def test_divert_process_shapes_marks_and_reinjects(tmp_path):
    divert = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    divert.bind(("127.0.0.1", 0))
    divert.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    kernel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # plays the kernel's side
    kernel.bind(("127.0.0.1", 0))
    kernel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    kernel.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    kernel.settimeout(5)
    tel = tmp_path / "telemetry"
    # 'overflow' (no drop on overload): the burst builds 600 ms of queue, and with the coin at
    # dequeue (Linux's drop_dequeue) an overloaded DualPI2 would drop ECN-capable packets too;
    # without drop_overload it only marks, so every packet must come back
    config = {"divert_port": divert.getsockname()[1], "policy": "dualpi2",
              "policy_args": {"drop_overload": False},
              "rate_bps": RATE, "buffer_pkts": 1000, "buffer_bytes": 1_500_000, "buffer_in": "packets",
              "telemetry_dir": str(tel), "counters_path": str(tel / "divert-counters.json")}
    tel.mkdir()
    proc = DivertProcess(config, sock=divert)
    thread = threading.Thread(target=proc.run, daemon=True)
    thread.start()
    n = 300
    sent = [packet(i) for i in range(n)]
    for pkt in sent:
        kernel.sendto(pkt, divert.getsockname())
    got, stamps = zip(*(recv_stamped(kernel) for _ in range(n)), strict=True)
    proc._stop()
    thread.join(10)
    counters = json.loads((tel / "divert-counters.json").read_text())
    assert counters["datapath"] == "divert"
    # every packet comes back (the buffer holds them all), in order within each class
    assert len(got) == n
    # the rate, from the kernel's receive times: the burst keeps the link busy, so packet k
    # leaves one serialisation time after packet k-1 (virtual time: lateness does not
    # accumulate); the span first-last is (n-1) gaps, give or take the lateness the link
    # measured on its releases (and 1 ms for loopback delivery)
    gap = (SIZE + 14) * 8 / RATE  # 2.028 ms
    span = stamps[-1] - stamps[0]
    slack = counters["release_late_ms_max"] / 1e3 + 0.001
    print(f"\ndivert: span {span * 1e3:.1f} ms for {n - 1} gaps of {gap * 1e3:.3f} ms "
          f"({(n - 1) * gap * 1e3:.1f} ms), release lateness max {counters['release_late_ms_max']:.2f} ms")
    assert abs(span - (n - 1) * gap) <= slack, (span, (n - 1) * gap, slack)
    # a standing queue of tens of ms: DualPI2's 1 ms step marks the L4S packets CE
    l4s = [p for p in got if int.from_bytes(p[4:6], "big") % 2]  # odd IP ids were sent ECT(1)
    assert sum(1 for p in l4s if p[1] & 3 == 3) > len(l4s) // 2
    # checksums, recomputed by an independent parser from a pcap of what came back: every IPv4
    # header (rewritten incrementally by the CE marking) and every TCP/UDP checksum valid
    wrpcap(str(tmp_path / "back.pcap"), [IP(p) for p in got])
    sums = checksums_from_pcap(tmp_path / "back.pcap")
    assert len(sums) == n and all(ip_ok and l4_ok for ip_ok, l4_ok in sums), sums
    assert sum(1 for p in got if p[1] & 3 == 3) > n // 4  # the marked ones are among them
    # and what came back is what was sent but for the ECN field and the header checksum
    for a, b in zip(sorted(got, key=lambda p: p[4:6]), sorted(sent, key=lambda p: p[4:6]), strict=True):
        assert a[0] == b[0] and a[2:10] == b[2:10] and a[12:] == b[12:] and a[1] & ~3 == b[1] & ~3
    import pandas as pd

    packets = pd.concat(pd.read_parquet(p) for p in sorted((tel / "packets").glob("part-*.parquet")))
    assert len(packets) == n and set(packets["cls"]) == {0, 1}
    assert (packets["sojourn_ms"].max()) > 50  # the queue the burst built, as the link measured it
    assert '"datapath": "divert"' in (tel / "packets" / "meta.json").read_text()
