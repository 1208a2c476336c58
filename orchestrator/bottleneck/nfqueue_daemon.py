"""The nfqueue link's process: binds NFQUEUE in the router's namespace, runs the event loop
that feeds packets to the `nfqueue_link.Link` and the control loop, writes counters at exit.

    python -m orchestrator.bottleneck.nfqueue_daemon --config CONFIG.json
"""

from __future__ import annotations

import argparse
import gc
import json
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from random import seed as random_seed
from time import monotonic
from typing import Any

from orchestrator import strictjson
from orchestrator.bottleneck.dualq import WIRE_MTU
from orchestrator.bottleneck.nfqueue_link import Controller, Link, buffer_limits, sample_rate
from orchestrator.bottleneck.packetlog import PacketLog
from orchestrator.bottleneck.service import make_loss, make_service, write_capacity


def set_timer_slack(ns: int = 1000) -> None:
    """Sleep until the next departure with 1 us slack, not the default 50 us."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, ns, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def kernel_queue_stats(num: int) -> dict[str, int]:
    """Drops the kernel counted for our NFQUEUE (queue full; netlink socket overflow)."""
    try:
        for line in Path("/proc/net/netfilter/nfnetlink_queue").read_text().splitlines():
            f = line.split()
            if int(f[0]) == num:
                return {"queue_total": int(f[2]), "queue_dropped": int(f[5]),
                        "user_dropped": int(f[6]), "id_sequence": int(f[7])}
    except (OSError, ValueError, IndexError):
        pass
    return {}


class ArrivalClock:
    """Turns the kernel's receive timestamps (wall clock) into our monotonic clock."""

    SO_TIMESTAMP = 29  # asm-generic/socket.h; Python's socket module does not export it

    def __init__(self, kernel: bool) -> None:
        self.kernel = kernel
        self.sock: socket.socket | None = None
        if kernel:
            # Any socket asking for timestamps makes the kernel stamp every packet it receives
            # (a global switch), forwarded ones included; keep it open for our lifetime.
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, self.SO_TIMESTAMP, 1)
        self.offset = 0.0
        self.refresh()
        self.reads = 0
        self.wait_sum = self.wait_max = 0.0
        self.wait_over = [0, 0]  # read more than 1, 5 ms after the kernel received it

    def waited(self, w: float) -> None:
        self.reads += 1
        self.wait_sum += w
        if w > 0.001:
            self.wait_over[0] += 1
            self.wait_over[1] += w > 0.005
            if w > self.wait_max:
                self.wait_max = w

    def stats(self) -> dict[str, float]:
        """How long packets waited between the kernel's receive and this process's read."""
        return {"read_wait_ms_mean": self.wait_sum / max(self.reads, 1) * 1e3,
                "read_wait_ms_max": self.wait_max * 1e3, "reads_late_1ms": self.wait_over[0],
                "reads_late_5ms": self.wait_over[1]}

    def refresh(self) -> None:
        """Re-read the wall/monotonic offset (NTP slews the wall clock)."""
        self.offset = time.time() - time.monotonic()


class LinkDaemon:
    """The link process: binds the queue, runs the event loop, writes counters at exit."""

    def __init__(self, config: dict[str, Any]) -> None:
        import pyarrow.parquet  # noqa: F401 - imported now, not by the first write (GIL held)

        import policies
        from orchestrator.bottleneck.control import ControlLoop

        self.config = config
        self.policy = policies.from_config(config)
        if config.get("seed") is not None:
            random_seed(config["seed"])  # the coin tosses and the log's sampling
        qcfg = self.policy.queue_config()
        tel = Path(config["telemetry_dir"])
        self.start = time.monotonic()
        self.offset = time.time() - self.start
        rate = sample_rate(config)
        self.log = PacketLog(tel / "packets", rate, self.offset,
                             meta={"datapath": "nfqueue", "policy": self.policy.name,
                                   "link_rate_bps": config["rate_bps"], "clock": "epoch"})
        limit_pkts, limit_bytes = buffer_limits(config, qcfg)
        self.link = Link(config["rate_bps"], qcfg, limit_pkts, limit_bytes, self.policy,
                         self.log, self.offset, self.start,
                         qcfg.min_backlog_bytes if qcfg.min_backlog_bytes is not None
                         else config.get("min_backlog_bytes", 2 * WIRE_MTU), loss=make_loss(config))
        # a schedule starts when the run writes its t0 (the flows' release); until then the
        # link holds the schedule's first rate
        self.schedule = config.get("schedule")
        self.t0_epoch: float | None = None
        if self.schedule:
            self.link.sec_per_byte = 8.0 / float(self.schedule["initial_rate_bps"])
            if self.schedule.get("t0_epoch") is not None:
                self._begin(float(self.schedule["t0_epoch"]))
        loop = ControlLoop(self.policy, qcfg.tupdate_s, tel / "control")
        self.control = Controller(loop, self.link, self.start, self.offset)
        self.clock = ArrivalClock(bool(config.get("kernel_timestamps", True)))
        self.limits = {"limit_pkts": limit_pkts, "limit_bytes": limit_bytes,
                       "dualq": qcfg.dualq, "c_protection": qcfg.c_protection,
                       "tupdate_s": qcfg.tupdate_s, "sample_rate": rate,
                       "arrival_clock": "kernel" if self.clock.kernel else "process"}
        self.stopping = False
        self.wakeups = 0  # event loop iterations: the per-wake-up cost dominates at low rates

    def run(self) -> int:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        num = int(self.config.get("queue_num", 10))
        link, clock = self.link, self.clock

        def on_packet(pkt: Any) -> None:
            now = monotonic()
            t = pkt.get_timestamp() - clock.offset if clock.kernel else now
            if not now - 1.0 < t <= now:  # unstamped (0), or the wall clock stepped
                t = now
            clock.waited(now - t)
            link.arrive(pkt, t)
            # Serve from here too when the link is free: under load nfq.run() drains the whole
            # socket before returning, and the queue must not wait for that. Packets are read
            # in arrival order, so everything that arrived before this one has been read: the
            # link may start packets up to its arrival, not beyond (nfqueue_link.DualQueue.pop).
            if link.free_at <= now:
                link.serve(now, t)

        nfq = NetfilterQueue()
        nfq.bind(num, on_packet, max_len=1 << 18,
                 mode=COPY_PACKET, range=0xFFFF, sock_len=32 << 20)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        set_timer_slack()
        gc.freeze()  # the startup's objects (pandas, pyarrow, policy) out of every collection
        sys.setswitchinterval(0.001)  # a control or writer thread must not hold us for 5 ms
        print(f"nfqueue-link ready queue={num} {json.dumps(self.limits)}", flush=True)
        rc = 0
        try:
            self._loop(nfq)
        except Exception:  # noqa: BLE001 - report, flush what we have, exit non-zero
            traceback.print_exc()
            rc = 1
        self._finish(nfq, num, rc)
        return rc

    def _loop(self, nfq: Any) -> None:
        fd, link, control, log = nfq.get_fd(), self.link, self.control, self.log
        monotonic, poll = time.monotonic, select.select
        next_flush = self.start + log.flush_s
        while not self.stopping:
            self.wakeups += 1
            now = monotonic()
            wake = link.serve(now)
            if now >= control.next:
                control.tick(now)
                self.clock.refresh()
                if self.schedule and self.t0_epoch is None:
                    self._poll_t0()
            if now >= next_flush:
                log.flush()
                next_flush = now + log.flush_s
            until = min(control.next, next_flush) if wake is None else \
                min(wake, control.next, next_flush)
            ready, _, _ = poll((fd,), (), (), max(0.0, until - monotonic()))
            if ready:
                nfq.run(block=False)

    def _stop(self, *_: Any) -> None:
        self.stopping = True

    def _begin(self, t0_epoch: float) -> None:
        self.t0_epoch = t0_epoch
        self.link.service = make_service(self.config, self.offset, t0_epoch)

    def _poll_t0(self) -> None:
        from orchestrator.spec.dynamic import read_t0

        t0 = read_t0(self.schedule["t0_path"])
        if t0 is not None:
            self._begin(t0)

    def _finish(self, nfq: Any, num: int, rc: int) -> None:
        import resource

        kernel = kernel_queue_stats(num)
        flushed = self.link.flush_all()
        nfq.unbind()
        control = self.control.close()
        self.link.state(time.monotonic())  # a last capacity sample
        write_capacity(self.config, self.link, self.t0_epoch, time.time())
        counters = {"datapath": "nfqueue", "exit_code": rc, **self.limits,
                    **self.link.counters(), "released_at_exit": flushed,
                    "updates": control["updates"], "missed_deadlines": control["missed"],
                    "control": control, "kernel_queue": kernel, **self.clock.stats()}
        self.log.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        counters.update(packets_logged=self.log.rows, wakeups=self.wakeups, cpu_user_s=usage.ru_utime,
                        cpu_sys_s=usage.ru_stime, wall_s=time.monotonic() - self.start)
        path = self.config.get("counters_path")
        if path:
            Path(path).write_text(strictjson.dumps(counters, indent=1))
        print(f"nfqueue-link done {json.dumps(counters)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="JSON file written by NfqueueDatapath")
    args = ap.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    return LinkDaemon(config).run()


if __name__ == "__main__":
    sys.exit(main())
