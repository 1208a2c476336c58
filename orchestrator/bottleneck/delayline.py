"""A userspace delay line on NFQUEUE, for kernels without netem.

Runs in the router's namespace. iptables (mangle table, FORWARD chain) hands it the packets of
each direction on queue 0 (forward: towards the bottleneck) and queue 1 (reverse: the ACK
path). Each packet is held for its one-way delay and then accepted; the rules use
--queue-bypass, so if this process dies traffic still flows, without the delay.

Delay of a packet = the direction's base delay, plus on the reverse path the round-trip extra
delay of the access links of its source and destination hosts (looked up by IPv4 address).
Extra access-link delay is applied on the reverse path only, as twice the one-way figure: TCP
sees the same RTT, and the forward path, which carries the data, needs no hook.

A delay schedule (config `schedule`: {"steps": [[t, forward s, reverse s], ...], "t0_path":
FILE}) changes the base delays at its times, counted from the epoch the run writes to FILE
when the flows start (spec/dynamic.py). Each direction stays first in, first out: when
the delay drops, a packet is never released before one that came earlier (as a real path
whose latency falls does not reorder what is already in flight), so the drop takes effect
over one old delay.

    python -m orchestrator.bottleneck.delayline CONFIG.json
"""

from __future__ import annotations

import heapq
import json
import select
import sys
import time
from typing import Any

from orchestrator.bottleneck.signals import stop_event

# Only the IPv4 header is needed to pick the delay: copy 20 bytes per packet, not the payload.
COPY_BYTES = 20
QUEUE_MAXLEN = 65536


class DelayLine:
    def __init__(self, base_s: dict[int, float], extra_s: dict[bytes, float],
                 extra_queue: int = 1) -> None:
        self.base_s = base_s  # queue number -> one-way delay
        self.extra_s = extra_s  # packed IPv4 address -> extra delay, on extra_queue only
        self.extra_queue = extra_queue
        self.held: list[tuple[float, int, Any]] = []
        self.seq = 0
        self.held_max = 0
        self.last_due: dict[int, float] = {}  # per queue: FIFO across delay changes
        self.changes: list[tuple[float, dict[int, float]]] = []  # (monotonic due, base_s)
        self.applied: list[tuple[float, float, dict[int, float]]] = []  # (due, applied, base_s)

    def schedule(self, steps: list[list[float]], t0: float) -> None:
        """Base delays [[t, forward, reverse], ...] from t0 (monotonic) on."""
        self.changes = [(t0 + float(t), {0: float(f), 1: float(r)}) for t, f, r in steps]

    def apply_due(self, now: float) -> float | None:
        """Apply the changes whose time has come; return when the next one is due."""
        while self.changes and self.changes[0][0] <= now:
            due, base = self.changes.pop(0)
            self.base_s = {q: base.get(q, d) for q, d in self.base_s.items()}
            self.applied.append((due, now, dict(self.base_s)))
        return self.changes[0][0] if self.changes else None

    def delay_of(self, queue: int, header: bytes) -> float:
        delay = self.base_s[queue]
        if queue == self.extra_queue and self.extra_s:
            delay += self.extra_s.get(header[12:16], 0.0) + self.extra_s.get(header[16:20], 0.0)
        return delay

    def hold(self, queue: int, pkt: Any, now: float | None = None) -> None:
        due = (time.monotonic() if now is None else now) + self.delay_of(queue, pkt.get_payload())
        if self.changes or self.applied:  # only a schedule can make a later packet due earlier
            due = max(due, self.last_due.get(queue, 0.0))
            self.last_due[queue] = due
        self.seq += 1  # ties keep arrival order
        heapq.heappush(self.held, (due, self.seq, pkt))
        self.held_max = max(self.held_max, len(self.held))

    def release_due(self) -> float | None:
        """Accept every packet whose time has come; return seconds to the next one."""
        now = time.monotonic()
        while self.held and self.held[0][0] <= now:
            heapq.heappop(self.held)[2].accept()
        return self.held[0][0] - now if self.held else None

    def flush(self) -> None:
        while self.held:
            heapq.heappop(self.held)[2].accept()


def run(config: dict[str, Any]) -> None:
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    base = {int(q): float(d) for q, d in config["base_s"].items()}
    extra = {_pack(ip): float(d) for ip, d in config.get("extra_s", {}).items()}
    line = DelayLine(base, extra)
    queues = []
    for num in base:
        nfq = NetfilterQueue()
        nfq.bind(num, lambda pkt, num=num: line.hold(num, pkt), max_len=QUEUE_MAXLEN,
                 mode=COPY_PACKET, range=COPY_BYTES, sock_len=8 << 20)
        queues.append(nfq)
    stop = stop_event()
    fds = {nfq.get_fd(): nfq for nfq in queues}
    sched = config.get("schedule")
    next_poll = 0.0
    print("delayline ready", flush=True)
    while not stop.is_set():
        now = time.monotonic()
        wait = line.release_due()
        if sched and now >= next_poll:  # wait for the run's t0, then for each change
            next_poll = now + 0.005
            if not line.changes and not line.applied:
                from orchestrator.spec.dynamic import read_t0

                t0 = read_t0(sched["t0_path"])
                if t0 is not None:
                    line.schedule(sched["steps"], t0 - (time.time() - time.monotonic()))
            nxt = line.apply_due(now)
            if nxt is None and line.applied:
                sched = None  # done: no more polling
        if sched:
            wait = 0.005 if wait is None else min(wait, 0.005)
        try:
            ready, _, _ = select.select(list(fds), [], [], 0.5 if wait is None else max(wait, 0))
        except InterruptedError:
            continue
        for fd in ready:
            fds[fd].run(block=False)
    line.flush()
    for nfq in queues:
        nfq.unbind()
    if config.get("applied_path"):
        import os

        offset = time.time() - time.monotonic()
        os.makedirs(os.path.dirname(config["applied_path"]), exist_ok=True)  # fetched already?
        with open(config["applied_path"], "w") as f:
            json.dump([{"due": d + offset, "applied": a + offset, "base_s": b}
                       for d, a, b in line.applied], f)


def _pack(ip: str) -> bytes:
    return bytes(int(x) for x in ip.split("."))


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        run(json.load(f))
