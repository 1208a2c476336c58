"""The divert datapath: the project's policies on a FreeBSD router, through divert(4) sockets,
the FreeBSD counterpart of NFQUEUE.

An ipfw rule (orchestrator/providers/ssh/freebsd.py) diverts every packet leaving the bottleneck interface
to DIVERT_PORT. This process reads them from a divert socket and hands them to the same link
as the nfqueue datapath (orchestrator/bottleneck/nfqueue_link.py: two queues, the policy's
per-packet decisions, CE marking with the checksum fixed, the rate, the control loop, the
per-packet telemetry). A packet the link releases is written back to the socket with the
address it came with: its port is the divert rule's number, so ipfw resumes after that rule
(the forward-delay pipe), and its address is INADDR_ANY, so it goes out as outgoing. A dropped
packet is simply not written back. Telemetry goes to the router's state dir; the capture
playbook fetches it.

    python -m orchestrator.bottleneck.divert --config CONFIG.json
"""

from __future__ import annotations

import argparse
import errno
import json
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from orchestrator import strictjson
from orchestrator.bottleneck.nfqueue_daemon import LinkDaemon

IPPROTO_DIVERT = 258  # socket(AF_INET, SOCK_RAW, IPPROTO_DIVERT), still accepted by FreeBSD 14
BATCH = 256  # packets read per wake-up


class DivertPacket:
    """What the link needs of a packet (nfqueue_link.Packet), over a divert socket."""

    __slots__ = ("data", "addr", "sock")

    def __init__(self, data: bytes, addr: Any, sock: socket.socket) -> None:
        self.data, self.addr, self.sock = data, addr, sock

    def get_payload(self) -> bytes:
        return self.data

    def set_payload(self, payload: bytes) -> None:
        self.data = payload

    def accept(self) -> None:
        try:
            self.sock.sendto(self.data, self.addr)
        except OSError as e:  # ENOBUFS under load: the kernel drops it, as a full queue would
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                raise

    def drop(self) -> None:
        pass  # not written back: the kernel has already let go of it


def open_divert(port: int) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_DIVERT)
    except OSError as e:
        raise SystemExit(f"cannot open a divert socket ({e}): is this FreeBSD with ipdivert.ko "
                         f"loaded (kldload ipdivert), and are we root?") from None
    sock.bind(("0.0.0.0", port))
    return sock


class DivertProcess(LinkDaemon):
    """nfqueue_link's process, reading a divert socket instead of an NFQUEUE."""

    def __init__(self, config: dict[str, Any], sock: socket.socket | None = None) -> None:
        # divert(4) gives no arrival timestamp: arrival is when this process reads the packet
        super().__init__({**config, "kernel_timestamps": False})
        meta_path = Path(config["telemetry_dir"]) / "packets" / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(strictjson.dumps({**meta, "datapath": "divert"}, indent=1))
        self.sock = sock or open_divert(int(config["divert_port"]))
        self.sock.setblocking(False)

    def run(self) -> int:
        try:
            signal.signal(signal.SIGTERM, self._stop)
            signal.signal(signal.SIGINT, self._stop)
        except ValueError:  # not the main thread (tests drive it from one)
            pass
        print(f"divert ready port={self.config.get('divert_port')} {json.dumps(self.limits)}", flush=True)
        rc = 0
        try:
            self._divert_loop()
        except Exception:  # noqa: BLE001 - report, flush what we have, exit non-zero
            traceback.print_exc()
            rc = 1
        self._close(rc)
        return rc

    def _divert_loop(self) -> None:
        link, control, log, sock = self.link, self.control, self.log, self.sock
        monotonic = time.monotonic
        next_flush = self.start + log.flush_s
        while not self.stopping:
            now = monotonic()
            wake = link.serve(now)
            if now >= control.next:
                control.tick(now)
            if now >= next_flush:
                log.flush()
                next_flush = now + log.flush_s
            until = min(control.next, next_flush) if wake is None else min(wake, control.next, next_flush)
            ready, _, _ = select.select((sock,), (), (), max(0.0, until - monotonic()))
            if ready:
                self._read(sock, monotonic)

    def _read(self, sock: socket.socket, monotonic: Any) -> None:
        link = self.link
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            now = monotonic()
            link.arrive(DivertPacket(data, addr, sock), now)
            if link.free_at <= now:  # as the nfqueue loop: a free link starts at once
                link.serve(now, now)

    def _close(self, rc: int) -> None:
        flushed = self.link.flush_all()
        control = self.control.close()
        counters = {"datapath": "divert", "exit_code": rc, **self.limits, **self.link.counters(),
                    "released_at_exit": flushed, "updates": control.get("updates"),
                    "missed_deadlines": control.get("missed"), "control": control}
        self.log.close()
        self.sock.close()
        counters.update(packets_logged=self.log.rows, wall_s=time.monotonic() - self.start)
        path = self.config.get("counters_path")
        if path:
            Path(path).write_text(strictjson.dumps(counters, indent=1))
        print(f"divert done {json.dumps(counters)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="JSON written by the freebsd_router role")
    args = ap.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    Path(config["telemetry_dir"]).mkdir(parents=True, exist_ok=True)
    return DivertProcess(config).run()


if __name__ == "__main__":
    sys.exit(main())
