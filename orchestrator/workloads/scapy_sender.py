"""Crafted UDP traffic for tests and for probing an AQM: bursts, short flows, mixed ECN.

Headers are built with scapy once per shape; each packet is then the template with its
(sequence, send time) patched in (the udp_cbr header, so udp_cbr's receiver counts it) and
sent through a raw IP socket (the kernel fills the IP checksum; the UDP checksum is 0, which
IPv4 allows). Patterns, each averaging --rate:
  burst        every --period seconds, rate*period worth of packets back to back;
  short-flows  flows of --flow-packets back-to-back packets, each from a new source port,
               starting at exponential (Poisson) intervals;
  mixed-ecn    paced packets cycling through Not-ECT, ECT(0), ECT(1) and CE.

    python -m orchestrator.workloads.scapy_sender --pattern burst --src 10.0.1.1 \
        --dst 10.0.3.2 --port 7002 --rate 5e6 --duration 10 --start-at -
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import time
from typing import Any

from orchestrator.workloads import tool
from orchestrator.workloads.tool import Stopped

HEADER = struct.Struct("!Qd")  # as udp_cbr: sequence number, send time
IP_HLEN, UDP_HLEN = 20, 8
ECN_CYCLE = (0, 2, 1, 3)  # Not-ECT, ECT(0), ECT(1), CE


def template(src: str, dst: str, sport: int, dport: int, ecn: int, size: int) -> bytearray:
    from scapy.layers.inet import IP, UDP

    pkt = IP(src=src, dst=dst, tos=ecn & 3, ttl=64) / UDP(sport=sport, dport=dport, chksum=0) / (b"\0" * size)
    return bytearray(bytes(pkt))


class Crafter:
    """Templates by (sport, ecn), a raw socket, and the counters of the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.templates: dict[tuple[int, int], bytearray] = {}
        self.seq = 0
        self.sent = 0
        self.errors = 0
        self.ecn = [0, 0, 0, 0]
        self.sports: set[int] = set()

    def send(self, sport: int, ecn: int) -> None:
        key = (sport, ecn)
        pkt = self.templates.get(key)
        if pkt is None:
            a = self.args
            pkt = self.templates[key] = template(a.src, a.dst, sport, a.port, ecn, a.size)
        HEADER.pack_into(pkt, IP_HLEN + UDP_HLEN, self.seq, time.time())
        self.seq += 1
        try:
            self.sock.sendto(pkt, (self.args.dst, 0))
            self.sent += 1
            self.ecn[ecn] += 1
            self.sports.add(sport)
        except OSError:
            self.errors += 1


def burst(c: Crafter, start: float, end: float) -> None:
    a = c.args
    per_burst = max(int(a.rate * a.period / 8 / a.size), 1)
    k = 0
    while start + k * a.period < end:
        _sleep_until(start + k * a.period)
        for _ in range(per_burst):
            c.send(a.sport, a.ecn)
        k += 1


def short_flows(c: Crafter, start: float, end: float) -> None:
    a = c.args
    rng = random.Random(a.seed)
    flows_per_s = a.rate / 8 / (a.size * a.flow_packets)
    t, sport = start, a.sport
    while True:
        t += rng.expovariate(flows_per_s)
        if t >= end:
            return
        _sleep_until(t)
        sport = sport + 1 if sport < 65000 else 20000
        for _ in range(a.flow_packets):
            c.send(sport, a.ecn)


def mixed_ecn(c: Crafter, start: float, end: float) -> None:
    a = c.args
    interval = a.size * 8 / a.rate
    k = 0
    while start + k * interval < end:
        _sleep_until(start + k * interval)
        c.send(a.sport, ECN_CYCLE[k % 4])
        k += 1


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


PATTERNS = {"burst": burst, "short-flows": short_flows, "mixed-ecn": mixed_ecn}


def run(args: argparse.Namespace) -> dict[str, Any]:
    crafter = Crafter(args)
    crafter.templates[(args.sport, args.ecn)] = template(args.src, args.dst, args.sport, args.port,
                                                         args.ecn, args.size)  # scapy warm
    print("ready", file=sys.stderr, flush=True)
    report: dict[str, Any] = {"role": "client", "pattern": args.pattern, "sport": args.sport,
                              "dport": args.port}
    try:
        if args.start_at is not None:
            _sleep_until(float(sys.stdin.readline() if args.start_at == "-" else args.start_at))
        report["start"] = start = time.time()
        PATTERNS[args.pattern](crafter, start, start + args.duration)
    except Stopped:
        report["error"] = "stopped"
    report["end"] = time.time()
    report.update(packets_sent=crafter.sent, bytes_sent=crafter.sent * args.size,
                  send_errors=crafter.errors, sports=len(crafter.sports),
                  ecn_sent=dict(zip(("not-ect", "ect1", "ect0", "ce"), crafter.ecn, strict=True)))
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scapy_sender", description=__doc__.split("\n\n")[0])
    p.add_argument("--pattern", choices=sorted(PATTERNS), required=True)
    p.add_argument("--src", required=True, help="source address (the sender's own)")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sport", type=int, default=40000)
    p.add_argument("--rate", type=float, default=5e6, help="average bit/s of payload")
    p.add_argument("--size", type=int, default=1200, help="payload bytes")
    p.add_argument("--ecn", type=int, default=0, choices=range(4), help="ECN field (burst, short-flows)")
    p.add_argument("--period", type=float, default=0.2, help="burst: seconds between bursts")
    p.add_argument("--flow-packets", type=int, default=20, help="short-flows: packets per flow")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--start-at", default=None, help="epoch seconds, or '-' to read them from stdin")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return tool.run(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
