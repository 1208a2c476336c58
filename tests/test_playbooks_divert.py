"""The FreeBSD divert datapath's process (orchestrator/bottleneck/divert.py), driven on Linux through a
UDP socket in place of the divert(4) socket: same recvfrom/sendto contract (a packet goes back
to the address it came from), real link, policy, control loop and telemetry. divert(4) itself
needs a FreeBSD host (see playbooks/README.md)."""

from __future__ import annotations

import socket
import struct
import threading
import time

from orchestrator.bottleneck.divert import DivertProcess
from orchestrator.bottleneck.nfqueue_link import ipv4_checksum


def ipv4_udp(seq: int, ecn: int, payload: int = 972) -> bytes:
    """An IPv4/UDP packet of 1000 bytes with a valid header checksum."""
    total = 20 + 8 + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, ecn, total, seq & 0xFFFF, 0, 64, 17, 0,
                      bytes([10, 0, 1, 1]), bytes([10, 0, 3, 2]))
    hdr = hdr[:10] + ipv4_checksum(hdr).to_bytes(2, "big") + hdr[12:]
    return hdr + struct.pack("!HHHH", 5000, 5001, 8 + payload, 0) + bytes(payload)


def test_divert_process_shapes_marks_and_reinjects(tmp_path):
    divert = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    divert.bind(("127.0.0.1", 0))
    divert.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    kernel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # plays the kernel's side
    kernel.bind(("127.0.0.1", 0))
    kernel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    kernel.settimeout(5)
    tel = tmp_path / "telemetry"
    # 'overflow' (no drop on overload): the burst builds 600 ms of queue, and with the coin at
    # dequeue (Linux's drop_dequeue) an overloaded DualPI2 would drop ECN-capable packets too;
    # without drop_overload it only marks, so every packet must come back
    config = {"divert_port": divert.getsockname()[1], "policy": "dualpi2",
              "policy_args": {"drop_overload": False},
              "rate_bps": 4e6, "buffer_pkts": 1000, "buffer_bytes": 1_500_000, "buffer_in": "packets",
              "telemetry_dir": str(tel), "counters_path": str(tel / "divert-counters.json")}
    tel.mkdir()
    proc = DivertProcess(config, sock=divert)
    thread = threading.Thread(target=proc.run, daemon=True)
    thread.start()
    n = 300
    sent = [ipv4_udp(i, ecn=1 if i % 2 else 2) for i in range(n)]  # ECT(1) -> L, ECT(0) -> C
    t0 = time.monotonic()
    for pkt in sent:
        kernel.sendto(pkt, divert.getsockname())
    got = [kernel.recv(65535) for _ in range(n)]
    took = time.monotonic() - t0
    proc._stop()
    thread.join(10)
    # every packet comes back (the buffer holds them all), at the link's rate
    assert len(got) == n
    ideal = n * (1000 + 14) * 8 / 4e6  # wire bytes at 4 Mbit/s: 0.61 s
    assert 0.8 * ideal < took < 3 * ideal, (took, ideal)
    # a standing queue of tens of ms: DualPI2's 1 ms step marks the L4S packets CE, and
    # every packet that comes back still has a valid header checksum
    l4s = [p for p in got if int.from_bytes(p[4:6], "big") % 2]  # odd IP ids were sent ECT(1)
    assert sum(1 for p in l4s if p[1] & 3 == 3) > len(l4s) // 2
    assert all(ipv4_checksum(p[:20]) == int.from_bytes(p[10:12], "big") for p in got)
    counters = (tel / "divert-counters.json").read_text()
    assert '"datapath": "divert"' in counters
    import pandas as pd

    packets = pd.concat(pd.read_parquet(p) for p in sorted((tel / "packets").glob("part-*.parquet")))
    assert len(packets) == n and set(packets["cls"]) == {0, 1}
    assert (packets["sojourn_ms"].max()) > 50  # the queue the burst built, as the link measured it
    assert '"datapath": "divert"' in (tel / "packets" / "meta.json").read_text()
