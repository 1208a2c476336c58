"""What the datapath integration tests read off the wire at the receiver."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import dpkt
from scapy.utils import checksum


def capture(tb, path: Path) -> subprocess.Popen:
    """Headers of the UDP packets rx gets (immediate mode: a stop must not lose the last block)."""
    proc = tb.popen("rx", ["tcpdump", "-i", "e-r1", "-s", "64", "-U", "--immediate-mode", "-w", str(path),
                           "udp"],
                    tag="tcpdump", stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def ce_on_wire(path: Path) -> tuple[int, int, int]:
    """(UDP packets, CE-marked ones, CE-marked ones with a wrong IPv4 header checksum)."""
    total = ce = bad = 0
    with open(path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            ip = bytes(dpkt.ethernet.Ethernet(buf).data)
            total += 1
            if ip[1] & 3 == 3:
                ce += 1
                bad += checksum(ip[:(ip[0] & 0x0F) * 4]) != 0
    return total, ce, bad
