"""The nfqueue bottleneck link: the whole link in userspace, so any policy acts per packet.

Runs in the router's namespace, started by `NfqueueDatapath`. An iptables rule (filter table,
FORWARD, from the senders' side to the bottleneck egress) hands every forward packet to NFQUEUE
queue 10. This process

  1. classifies it (ECT(1) and CE -> L queue, the rest -> C queue, RFC 9331),
  2. tail-drops it when the buffer is full, else applies the policy's decision by a coin toss
     (drop, or CE-mark with the IPv4 checksum fixed incrementally; a Not-ECT packet that draws
     'mark' is dropped; TCP SYNs are never dropped or marked: an AQM that hits SYNs makes TCP
     fall back from ECN),
  3. serves the two queues at the link rate with the DualQ scheduler of Linux sch_dualpi2 (a
     WRR whose credit guarantees the C queue its `c_protection` share, RFC 9332 section
     4.2.2), or one FIFO for single-queue policies, and releases each packet (ACCEPT) when the
     link would have finished sending it,
  4. at dequeue applies the L queue's native step marking on sojourn time and the policy's
     per-packet hook (CoDel),
  5. every tupdate hands the per-class queue state to the control loop and applies the new
     decision, and
  6. logs every packet (or a sample at high packet rates) to Parquet parts.

A dynamic link (config `schedule`, see spec/schedule.py) replaces the fixed rate by a
service model in the same virtual clock: a rate schedule sets the service rate at its stated
times (a packet in flight at a change finishes at the new rate), a Mahimahi trace releases
packets at its delivery opportunities exactly as mm-link does. Random loss (config `loss`)
drops a packet after it crossed the link, on its own seeded stream. The policy never sees the
schedule: its state's link_rate_bps stays the nominal rate the run started with, and it must
infer changes from what a router measures (departure rate, backlog, sojourn).

The link runs in virtual time: a packet starts when the link is free and its head-of-line turn
comes, whatever the moment this process gets to it, so when this process is late (the machine
is busy) releases are late but the rate and the sojourn the link accounts stay those of the
ideal link; the counters say how late releases were. For that, a packet's arrival is the
kernel's receive timestamp (switched on by a SO_TIMESTAMP socket of ours), not the moment we
read it: otherwise a stall would bunch the packets that came during it onto one instant. When
a forward delay line sits in front of us, the receive timestamp predates its hold, so then the
arrival is the moment we read the packet (config kernel_timestamps = false).

The process around it (NFQUEUE, event loop, counters) is `nfqueue_daemon`.
"""

from __future__ import annotations

import math
import threading
from random import random
from time import monotonic
from typing import Any, Protocol

from orchestrator.bottleneck.dualpi2_rules import dequeue_coin, stepped
from orchestrator.bottleneck.dualq import INF, WIRE_MTU, C, DualQueue, Entry, L
from orchestrator.bottleneck.ecn import classify, ipv4_checksum, is_tcp_syn, set_ce
from orchestrator.bottleneck.packetlog import ETH_HEADER, PacketLog
from policies.base import Action, ClassState, Decision, Policy, QueueConfig, QueueState

__all__ = ["C", "L", "DualQueue", "Entry", "Link", "classify", "ipv4_checksum",
           "is_tcp_syn", "set_ce"]

CLS_NAMES = ("l4s", "classic")
ENQUEUE, DROP, MARK = int(Action.ENQUEUE), int(Action.DROP), int(Action.MARK)
NAN = math.nan


class Packet(Protocol):
    """What the link needs of a queued packet (netfilterqueue.Packet has it)."""

    def get_payload(self) -> bytes: ...
    def set_payload(self, payload: bytes) -> None: ...
    def accept(self) -> None: ...
    def drop(self) -> None: ...


# ---------------------------------------------------------------- the link


class Interval:
    """Per-class counters since the last policy update."""

    __slots__ = ("arrivals", "arr_bytes", "dep_pkts", "dep_bytes", "drops", "marks",
                 "soj_sum", "soj_max")

    def __init__(self) -> None:
        self.arrivals, self.arr_bytes = [0, 0], [0, 0]
        self.dep_pkts, self.dep_bytes = [0, 0], [0, 0]
        self.drops, self.marks = [0, 0], [0, 0]
        self.soj_sum, self.soj_max = [0.0, 0.0], [0.0, 0.0]


class Link:
    """Queues, policy decisions, the rate, and accounting; no I/O but the packets' verdicts."""

    def __init__(self, rate_bps: float, qcfg: QueueConfig, limit_pkts: float, limit_bytes: float,
                 policy: Policy | None = None, log: PacketLog | None = None,
                 epoch_offset: float = 0.0, start: float = 0.0,
                 min_backlog_bytes: float = 2 * WIRE_MTU, service: Any = None,
                 loss: Any = None) -> None:
        self.rate_bps = rate_bps  # nominal: what the policy's state says, whatever the schedule
        self.sec_per_byte = 8.0 / rate_bps
        # a schedule.RateService / TraceService (None: the fixed rate, on the fast path)
        self.service = service
        self.loss = loss  # a loss.Loss, applied after the link
        self.link_losses = 0
        self.capacity: list[tuple[float, float]] = []  # (epoch, bit/s in force), per state()
        self.queue = DualQueue(qcfg.dualq, qcfg.c_protection)
        self.limit_pkts, self.limit_bytes = limit_pkts, limit_bytes
        # Like sch_dualpi2 and PIE (RFC 8033 sec. 5.1): no probabilistic drop or mark while
        # less than this is queued; a decision cannot say it, so the datapath does.
        self.min_backlog = min_backlog_bytes
        self.policy = policy
        self.per_packet = policy is not None and policy.per_packet
        self.log = log
        self.offset = epoch_offset
        self.free_at = 0.0  # when the link finishes the packet in flight
        self.inflight: Any = None
        # per class: (p_drop, p_drop + p_mark, step threshold in s or None, in packets or None,
        # min_qlen_step, coin at dequeue)
        self.probs: list[tuple] = [(0.0, 0.0, None, None, 0, False)] * 2
        self.iv = Interval()
        self.last_state = start
        self.start = start
        self.totals: dict[str, list[int]] = {k: [0, 0] for k in
                                             ("arrivals", "departures", "drops", "marks")}
        self.overflow = self.syn_exempt = self.step_marks = 0
        self.max_backlog = 0
        self.late_sum = self.late_max = 0.0
        self.releases = 0
        self.late_over = [0, 0, 0]  # releases later than 1, 5, 20 ms (this process was busy)

    # ---- decisions
    def apply(self, decision: Decision) -> None:
        probs = []
        for name in CLS_NAMES:
            d = decision.of(name)
            step = None if d.step_threshold_ms is None else d.step_threshold_ms / 1e3
            probs.append((d.p_drop, d.p_drop + d.p_mark, step, d.step_threshold_pkts,
                          d.min_qlen_step, d.coin_at_dequeue))
        self.probs = probs  # one reference swap: safe against a control thread

    # ---- enqueue
    def arrive(self, pkt: Packet, now: float | None = None) -> None:
        """A packet from NFQUEUE (now: its arrival on the monotonic clock, default: now)."""
        if now is None:
            now = monotonic()
        data = pkt.get_payload()
        ecn = data[1] & 3
        cls = L if ecn & 1 else C
        size = len(data) + ETH_HEADER
        iv = self.iv
        iv.arrivals[cls] += 1
        iv.arr_bytes[cls] += size
        q = self.queue
        if q.total_pkts >= self.limit_pkts or q.total_bytes + size > self.limit_bytes:
            self.overflow += 1
            return self._drop(pkt, now, cls, ecn, data)
        action = ENQUEUE
        p_drop, p_any, _, _, min_qlen_step, at_dequeue = self.probs[cls]
        if p_any > 0.0 and not at_dequeue and q.total_bytes >= self.min_backlog:
            r = random()
            if r < p_any:
                if is_tcp_syn(data):
                    self.syn_exempt += 1
                elif r < p_drop or ecn == 0:
                    return self._drop(pkt, now, cls, ecn, data)
                else:
                    action = MARK
                    data = self._mark(pkt, cls, ecn, data)
        # last: may the step apply (sch_dualpi2 decides it at enqueue, from min_qlen_step)
        q.push((now, size, cls, ecn, action, pkt, data, q.pkts[cls] >= min_qlen_step))
        if q.total_pkts > self.max_backlog:
            self.max_backlog = q.total_pkts

    def _drop(self, pkt: Packet, t_arr: float, cls: int, ecn: int, data: bytes) -> None:
        pkt.drop()
        self.iv.drops[cls] += 1
        if self.log is not None:
            self.log.add(t_arr, NAN, cls | DROP << 1 | ecn << 3, data)

    def _mark(self, pkt: Packet, cls: int, ecn: int, data: bytes) -> bytes:
        self.iv.marks[cls] += 1
        if ecn != 3:
            data = set_ce(data)
            pkt.set_payload(data)
        return data

    # ---- dequeue
    def serve(self, now: float, horizon: float | None = None) -> float | None:
        """Release what the link has finished, start the next packets; return when to call
        again (the end of the packet in flight), or None when the link is idle.

        `horizon`: start nothing later than this (default now); see DualQueue.pop."""
        q = self.queue
        if horizon is None:
            horizon = now
        while True:
            if self.inflight is not None:
                if self.free_at > now:
                    return self.free_at
                if self.loss is not None and self.loss.lose():
                    self.inflight.drop()  # lost on the link after using its capacity
                    self.link_losses += 1
                else:
                    self.inflight.accept()
                self._lateness(now - self.free_at)
                self.inflight = None
            got = q.pop(self.free_at, horizon)
            if got is None:
                return None
            (t_arr, size, cls, ecn, action, pkt, data, may_step), start = got
            action, data = self._at_dequeue(pkt, start - t_arr, start, cls, ecn, action, data, may_step)
            if action == DROP:
                self._drop(pkt, t_arr, cls, ecn, data)
                continue
            if self.service is None:
                self.free_at = start + size * self.sec_per_byte
            else:  # a trace may make the packet wait for its delivery opportunity
                start, self.free_at = self.service.send(start, size)
            self.inflight = pkt
            iv = self.iv
            sojourn = start - t_arr
            iv.dep_pkts[cls] += 1
            iv.dep_bytes[cls] += size
            iv.soj_sum[cls] += sojourn
            if sojourn > iv.soj_max[cls]:
                iv.soj_max[cls] = sojourn
            if self.log is not None:
                self.log.add(t_arr, start, cls | action << 1 | ecn << 3, data)

    def _at_dequeue(self, pkt: Packet, sojourn: float, start: float, cls: int, ecn: int,
                    action: int, data: bytes, may_step: bool = True) -> tuple[int, bytes]:
        """The coin if the decision tosses it at dequeue, step marking (ECN-capable packets
        only: a step AQM is a marking AQM), and the policy's per-packet hook."""
        p_drop, p_any, step, step_pkts, _, at_dequeue = self.probs[cls]
        if at_dequeue and action == ENQUEUE:
            action, data = dequeue_coin(self, pkt, cls, ecn, data, p_drop, p_any)
        if may_step and ecn and action == ENQUEUE and stepped(self.queue.pkts[cls], sojourn, step, step_pkts):
            self.step_marks += 1
            return MARK, self._mark(pkt, cls, ecn, data)
        if self.per_packet and action == ENQUEUE:
            q = self.queue  # the backlog left behind in this packet's own queue
            backlog = q.bytes[cls] if q.dualq else q.total_bytes
            verdict = self.policy.on_dequeue(CLS_NAMES[cls], sojourn, start + self.offset, backlog)
            if verdict != ENQUEUE and is_tcp_syn(data):
                self.syn_exempt += 1
            elif verdict == DROP or (verdict == MARK and not ecn):
                return DROP, data
            elif verdict == MARK:
                return MARK, self._mark(pkt, cls, ecn, data)
        return action, data

    def _lateness(self, late: float) -> None:
        self.releases += 1
        self.late_sum += late
        if late > 0.001:
            self.late_over[0] += 1
            if late > 0.005:
                self.late_over[1] += 1
                self.late_over[2] += late > 0.020
            if late > self.late_max:
                self.late_max = late

    # ---- state for the policy
    def state(self, now: float) -> QueueState:
        """The queue state since the last call; starts a new interval."""
        iv, self.iv = self.iv, Interval()
        dt = max(now - self.last_state, 1e-9)
        self.last_state = now
        if self.service is not None:
            self.capacity.append((now + self.offset, self.service.rate_at(now)))
        classes = []
        for cls in (L, C):
            n = iv.dep_pkts[cls]
            head = self.queue.head_arrival(cls)
            classes.append(ClassState(
                sojourn_ms=iv.soj_sum[cls] / n * 1e3 if n else 0.0,
                sojourn_max_ms=iv.soj_max[cls] * 1e3,
                head_sojourn_ms=0.0 if head is None else max(0.0, now - head) * 1e3,
                backlog_bytes=self.queue.bytes[cls], backlog_pkts=self.queue.pkts[cls],
                arrival_bps=iv.arr_bytes[cls] * 8 / dt, departure_bps=iv.dep_bytes[cls] * 8 / dt,
                arrivals=iv.arrivals[cls], drops=iv.drops[cls], marks=iv.marks[cls]))
            self._add_totals(iv, cls)
        return QueueState(t=now - self.start, dt=dt, link_rate_bps=self.rate_bps,
                          l4s=classes[L], classic=classes[C])

    def _add_totals(self, iv: Interval, cls: int) -> None:
        t = self.totals
        t["arrivals"][cls] += iv.arrivals[cls]
        t["departures"][cls] += iv.dep_pkts[cls]
        t["drops"][cls] += iv.drops[cls]
        t["marks"][cls] += iv.marks[cls]

    def flush_all(self) -> int:
        """Release everything held (at exit: hand the packets on rather than lose them)."""
        held = self.queue.drain()
        if self.inflight is not None:
            self.inflight.accept()
            self.inflight = None
        for entry in held:
            entry[5].accept()
        return len(held)

    def counters(self) -> dict[str, Any]:
        self.state(self.last_state)  # fold the open interval into the totals
        out: dict[str, Any] = {k: dict(zip(CLS_NAMES, v, strict=True)) for k, v in self.totals.items()}
        out.update(overflow_drops=self.overflow, syn_exempt=self.syn_exempt,
                   step_marks=self.step_marks, max_backlog_pkts=self.max_backlog,
                   link_losses=self.link_losses,
                   release_late_ms_mean=self.late_sum / max(self.releases, 1) * 1e3,
                   release_late_ms_max=self.late_max * 1e3, releases=self.releases,
                   releases_late_1ms=self.late_over[0], releases_late_5ms=self.late_over[1],
                   releases_late_20ms=self.late_over[2],
                   # a run whose share is above ~1% ran on a starved machine: the accounted
                   # sojourns are the ideal link's, the packets were later than that
                   late_share_5ms=self.late_over[1] / max(self.releases, 1))
        return out


# ---------------------------------------------------------------- the control driver


class Controller:
    """Runs ControlLoop.step every tupdate, in a thread of its own.

    The event loop decides when (every tupdate) and builds the state (cheap, and only it may
    touch the queues); the thread runs the policy and applies the decision. So neither a slow
    policy (an LLM on a CPU) nor the control log's Parquet writes ever stall the link. A tick
    that comes while the previous update is still running is counted as busy and its interval
    folds into the next state.
    """

    def __init__(self, loop: Any, link: Link, start: float, epoch_offset: float) -> None:
        self.loop, self.link = loop, link
        self.tupdate = loop.tupdate_s
        self.next = start + self.tupdate
        self.offset = epoch_offset
        self.busy_ticks = self.late_ticks = 0
        self.pending: tuple[QueueState, float] | None = None
        self.wake = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._work, name="control", daemon=True)
        self.thread.start()

    def tick(self, now: float) -> None:
        behind = int((now - self.next) // self.tupdate)
        self.late_ticks += behind
        self.next += (1 + behind) * self.tupdate
        if self.pending is not None:
            self.busy_ticks += 1
            return
        self.pending = (self.link.state(now), now + self.offset)
        self.wake.set()

    def _work(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.stopping:
                return
            if self.pending is not None:
                state, epoch = self.pending
                self.link.apply(self.loop.step(state, epoch))
                self.pending = None

    def close(self) -> dict[str, Any]:
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout=10)
        self.loop.close()
        stats = self.loop.stats()
        stats.update(busy_ticks=self.busy_ticks, late_ticks=self.late_ticks)
        return stats


# ---------------------------------------------------------------- the process


def buffer_limits(config: dict[str, Any], qcfg: QueueConfig) -> tuple[float, float]:
    """(packets, bytes): the policy's own limit if it sets one, else the testbed's buffer in
    the unit the spec gave it (like the baseline pfifo/bfifo)."""
    if qcfg.limit_pkts is not None:
        return qcfg.limit_pkts, INF
    if config.get("buffer_in", "packets") == "packets":
        return config["buffer_pkts"], INF
    return INF, config["buffer_bytes"]


def sample_rate(config: dict[str, Any]) -> float:
    """Log every packet up to log_max_pps packets/s of full-size packets at the link rate;
    above that, a uniform random sample (the rate goes into meta.json)."""
    if config.get("sample_rate"):
        return float(config["sample_rate"])
    pps = config.get("max_rate_bps", config["rate_bps"]) / (8 * WIRE_MTU)
    return min(1.0, config.get("log_max_pps", 20000) / pps)
