"""The project's own bulk TCP sender and receiver, for L4S flows (and classic ones).

Unlike iperf3 it sets TCP_CONGESTION before connect() (sender) and before listen() (receiver),
so a congestion control that needs ECN or AccECN negotiates it in the handshake. It also
samples tcp_info every --interval and keeps the samples in its report.

    python -m orchestrator.workloads.tcp_sender server --port 6001 --cc l4s_tb --mark 0x100
    python -m orchestrator.workloads.tcp_sender client --dst 10.0.3.2 --port 6001 --cc l4s_tb \
        --mark 0x300 --duration 10 --start-at -

Each side writes 'ready' to stderr once set up and its JSON report to stdout when done.
`--start-at -` reads the start time (epoch s) from stdin, so a scheduler can start many
processes early and release them together. Stdlib only: it runs inside a host's namespace.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
import time
from typing import Any

from orchestrator.workloads import tcpinfo, tool
from orchestrator.workloads.tool import Stopped, wait_start

CHUNK = 1 << 16  # one send(): 10 ms at 50 Mbit/s, so the deadline is met closely
NOTSENT_LOWAT = 128 * 1024  # unsent bytes kept in the socket: the flow stops on time
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


def _tcp_socket(cc: str | None, mark: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    if cc:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    return sock


def cc_of(sock: socket.socket) -> str:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0].decode()


# ---------------------------------------------------------------- receiver

def serve(args: argparse.Namespace) -> dict[str, Any]:
    lsock = _tcp_socket(args.cc, args.mark)
    lsock.bind(("0.0.0.0", args.port))
    lsock.listen(4)
    lsock.settimeout(args.timeout)
    print("ready", file=sys.stderr, flush=True)
    report: dict[str, Any] = {"role": "server", "port": args.port, "bytes_received": 0}
    try:
        conn, peer = lsock.accept()
    except (TimeoutError, Stopped):
        report["error"] = "no connection"
        return report
    report.update(peer=f"{peer[0]}:{peer[1]}", cc=cc_of(conn), accepted=time.time())
    buf = bytearray(1 << 18)
    try:
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            if not report["bytes_received"]:
                report["first_byte"] = time.time()
            report["bytes_received"] += n
    except (Stopped, ConnectionError) as e:
        report["error"] = type(e).__name__
    report["last_byte"] = time.time()
    report["ecn"] = tcpinfo.ecn_summary(tcpinfo.read(conn))
    conn.close()
    return report


# ---------------------------------------------------------------- sender

class Sampler(threading.Thread):
    """tcp_info every `interval` seconds while the flow runs."""

    def __init__(self, sock: socket.socket, interval: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.interval = sock, interval
        self.rows: list[list[float | int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.rows.append(tcpinfo.row(time.time(), tcpinfo.read(self.sock)))
            except OSError:
                return
            self.done.wait(self.interval)


def _client_socket(args: argparse.Namespace) -> socket.socket:
    sock = _tcp_socket(args.cc, args.mark)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    if args.rate:
        sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, struct.pack("Q", int(args.rate / 8)))
    if args.sport:
        sock.bind(("0.0.0.0", args.sport))
    return sock


def send(args: argparse.Namespace) -> dict[str, Any]:
    sock = _client_socket(args)
    print("ready", file=sys.stderr, flush=True)
    report: dict[str, Any] = {"role": "client", "cc_requested": args.cc, "bytes_sent": 0}
    try:
        wait_start(args.start_at)
        report["start"] = time.time()
        sock.connect((args.dst, args.port))
    except (OSError, Stopped) as e:
        report["error"] = f"connect: {e!r}"
        return report
    report.update(connected=time.time(), cc=cc_of(sock), sport=sock.getsockname()[1], dport=args.port)
    sampler = Sampler(sock, args.interval)
    sampler.start()
    try:
        _pump(sock, args, report)
        _drain(sock, report)
    except (Stopped, OSError) as e:
        report["error"] = type(e).__name__
    report.setdefault("end", time.time())
    sampler.done.set()
    sampler.join()
    _finish(sock, sampler, report)
    return report


def _pump(sock: socket.socket, args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Send until the deadline or the size; blocking sends with a short timeout, so the
    deadline holds even while the window is closed."""
    deadline = report["start"] + args.duration if args.duration else float("inf")
    size = args.size or float("inf")
    data = memoryview(bytes(CHUNK))
    sock.settimeout(0.1)
    while time.time() < deadline and report["bytes_sent"] < size:
        try:
            report["bytes_sent"] += sock.send(data[: int(min(CHUNK, size - report["bytes_sent"]))])
        except TimeoutError:
            continue
    report["send_end"] = time.time()


def _drain(sock: socket.socket, report: dict[str, Any]) -> None:
    """Half-close and wait for the receiver's close: then every byte has arrived."""
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(10)
    while sock.recv(1 << 12):
        pass
    report["end"] = time.time()


def _finish(sock: socket.socket, sampler: Sampler, report: dict[str, Any]) -> None:
    try:
        info = tcpinfo.read(sock)
    except OSError:
        info = tcpinfo.parse(b"")
    report.update(bytes_acked=info["bytes_acked"], retransmits=info["total_retrans"],
                  ecn=tcpinfo.ecn_summary(info), tcp_info_columns=tcpinfo.COLUMNS,
                  tcp_info=sampler.rows)
    sock.close()


# ---------------------------------------------------------------- command line

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tcp_sender", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--timeout", type=float, default=None, help="give up waiting for the sender")
    cli = sub.add_parser("client")
    cli.add_argument("--dst", required=True)
    cli.add_argument("--port", type=int, required=True)
    cli.add_argument("--sport", type=int, default=0)
    cli.add_argument("--duration", type=float, default=None, help="seconds to send")
    cli.add_argument("--size", type=int, default=None, help="bytes to send instead")
    cli.add_argument("--rate", type=float, default=None, help="pacing cap, bit/s")
    cli.add_argument("--interval", type=float, default=0.02, help="tcp_info sampling period, s")
    cli.add_argument("--start-at", default=None, help="epoch seconds, or '-' to read them from stdin")
    for sp in (srv, cli):
        sp.add_argument("--cc", default=None, help="TCP_CONGESTION, set before listen()/connect()")
        sp.add_argument("--mark", type=lambda v: int(v, 0), default=0, help="SO_MARK")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.role == "client" and not (args.duration or args.size):
        parser().error("client needs --duration or --size")
    return tool.run(lambda: serve(args) if args.role == "server" else send(args), error_exits=True)


if __name__ == "__main__":
    sys.exit(main())
