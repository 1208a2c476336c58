"""Constant-bit-rate UDP: a paced sender with a chosen ECN codepoint, and a counting receiver.

Unresponsive by design (it ignores loss and marks), so it can overload a link, e.g. at 120% of
its rate. Every datagram starts with (sequence, send time); the receiver counts packets, bytes,
losses and codepoints (IP_RECVTOS), and one-way delay (all hosts share this machine's clock).

    python -m orchestrator.workloads.udp_cbr recv --port 7001
    python -m orchestrator.workloads.udp_cbr send --dst 10.0.3.2 --port 7001 --rate 60e6 \
        --size 1200 --ecn 1 --duration 10 --start-at -

Each side writes 'ready' to stderr once set up and its JSON report to stdout when done
(the receiver on SIGTERM/SIGINT or after --idle seconds without a packet). Stdlib only.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from typing import Any

from orchestrator.workloads import tool
from orchestrator.workloads.tool import Stopped, wait_start

HEADER = struct.Struct("!Qd")  # sequence number, send time (epoch s)
ECN_NAMES = ("not-ect", "ect1", "ect0", "ce")  # by the ECN field's value 0..3
TICK = 0.001  # the sender sends what is due once per millisecond
MAX_BURST = 64  # after a stall, catch up at most this many packets at once


# ---------------------------------------------------------------- sender

def send(args: argparse.Namespace) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, args.ecn & 3)  # UDP may set the ECN bits
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
    sock.bind(("0.0.0.0", args.sport))
    sock.connect((args.dst, args.port))
    payload = bytearray(args.size)
    interval = args.size * 8 / args.rate
    report: dict[str, Any] = {"role": "client", "sport": sock.getsockname()[1], "dport": args.port,
                              "ecn": ECN_NAMES[args.ecn & 3], "packets_sent": 0, "bytes_sent": 0,
                              "send_errors": 0}
    print("ready", file=sys.stderr, flush=True)
    try:
        wait_start(args.start_at)
        report["start"] = start = time.time()
        _pace(sock, payload, start, start + args.duration, interval, report)
    except Stopped:
        report["error"] = "stopped"
    report["end"] = time.time()
    report["bytes_sent"] = report["packets_sent"] * args.size
    return report


def _pace(sock: socket.socket, payload: bytearray, start: float, end: float, interval: float,
          report: dict[str, Any]) -> None:
    """Send every packet due by now, then sleep a tick or until the next is due."""
    seq = 0
    report["skipped"] = 0
    while True:
        now = time.time()
        if now >= end:
            return
        due = int((now - start) / interval) + 1
        if due - seq > MAX_BURST:  # stalled (CPU): skip what can no longer go out on time
            report["skipped"] += due - MAX_BURST - seq
            seq = due - MAX_BURST
        while seq < due:
            HEADER.pack_into(payload, 0, seq, time.time())
            try:
                sock.send(payload)
                report["packets_sent"] += 1
            except OSError:  # ENOBUFS and friends: an unresponsive flow just goes on
                report["send_errors"] += 1
            seq += 1
        time.sleep(max(start + seq * interval - time.time(), TICK))


# ---------------------------------------------------------------- receiver

class Counter:
    """What arrived: packets, bytes, codepoints, highest sequence, one-way delays."""

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.ecn = [0, 0, 0, 0]
        self.max_seq = -1
        self.owd: list[float] = []
        self.first = self.last = 0.0
        self.sources: set[tuple[str, int]] = set()

    def add(self, data: bytes, tos: int, now: float, peer: tuple[str, int]) -> None:
        if not self.packets:
            self.first = now
        self.last = now
        self.packets += 1
        self.bytes += len(data)
        self.ecn[tos & 3] += 1
        self.sources.add(peer)
        if len(data) >= HEADER.size:
            seq, sent = HEADER.unpack_from(data)
            self.max_seq = max(self.max_seq, seq)
            self.owd.append(now - sent)

    def report(self) -> dict[str, Any]:
        owd = sorted(self.owd)
        pct = {f"p{p}": round(owd[min(int(len(owd) * p / 100), len(owd) - 1)] * 1e3, 3)
               for p in (5, 50, 95, 99)} if owd else {}
        return {"packets_received": self.packets, "bytes_received": self.bytes,
                "ecn_counts": dict(zip(ECN_NAMES, self.ecn, strict=True)), "max_seq": self.max_seq,
                "first": self.first, "last": self.last, "owd_ms": pct, "sources": len(self.sources)}


def recv(args: argparse.Namespace) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    sock.bind(("0.0.0.0", args.port))
    sock.settimeout(args.idle)
    counter = Counter()
    print("ready", file=sys.stderr, flush=True)
    space = socket.CMSG_SPACE(1)
    try:
        while True:
            data, anc, _, peer = sock.recvmsg(65535, space)
            tos = anc[0][2][0] if anc else 0
            counter.add(data, tos, time.time(), peer)
    except (Stopped, TimeoutError):
        pass
    return {"role": "server", "port": args.port, **counter.report()}


# ---------------------------------------------------------------- command line

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="udp_cbr", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    rx = sub.add_parser("recv")
    rx.add_argument("--port", type=int, required=True)
    rx.add_argument("--idle", type=float, default=None, help="stop after this long without a packet")
    tx = sub.add_parser("send")
    tx.add_argument("--dst", required=True)
    tx.add_argument("--port", type=int, required=True)
    tx.add_argument("--sport", type=int, default=0)
    tx.add_argument("--rate", type=float, required=True, help="bit/s of UDP payload")
    tx.add_argument("--size", type=int, default=1200, help="payload bytes per datagram")
    tx.add_argument("--ecn", type=int, default=0, choices=range(4), help="ECN field: 0 Not-ECT, 1 ECT(1), "
                    "2 ECT(0), 3 CE")
    tx.add_argument("--duration", type=float, required=True)
    tx.add_argument("--start-at", default=None, help="epoch seconds, or '-' to read them from stdin")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return tool.run(lambda: recv(args) if args.role == "recv" else send(args))


if __name__ == "__main__":
    sys.exit(main())
