"""CoDel: Controlled Delay (RFC 8289), a per-packet AQM acting at dequeue.

Once every packet has waited longer than `target` for a whole `interval`, CoDel drops one and
enters the dropping state; while the sojourn stays above target it drops again at

    drop_next = t + interval / sqrt(count)                      (RFC 8289 control_law())

so the drop rate grows with the square root of the number of drops, which is what a Reno flow
needs to reduce its rate linearly. On re-entry soon after leaving (within 16 intervals) the
count restarts from the drops of the last episode, not from 1.

RFC 8289's dequeue() drops in a loop inside one call; here each packet is one on_dequeue()
call, so the loop's hand-over ("look at the next packet after a drop") is the `_after` state.
With ecn=true the packet is CE-marked instead and sent, as in Linux sch_codel: marking ends the
loop at once and schedules the next signal right away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from policies.base import Action, Decision, Params, Policy, QueueConfig, QueueState, require


@dataclass
class CodelParams(Params):
    target_ms: float = field(default=5.0, metadata={"help": "acceptable standing queue delay (ms)"})
    interval_ms: float = field(default=100.0, metadata={
        "help": "sliding window for the minimum delay, about a worst-case RTT (ms)"})
    ecn: bool = field(default=False, metadata={
        "help": "CE-mark instead of dropping (Not-ECT packets are still dropped)"})
    maxpacket: int = field(default=1514, metadata={
        "help": "bytes: never drop while no more than this is queued (RFC 8289 maxpacket)"})
    limit: int | None = field(default=None, metadata={
        "help": "queue limit in packets (default: the testbed's buffer)"})

    def __post_init__(self) -> None:
        require(self.target_ms > 0, "target_ms", "> 0", self.target_ms)
        require(self.interval_ms > 0, "interval_ms", "> 0", self.interval_ms)
        require(self.maxpacket >= 0, "maxpacket", ">= 0 bytes", self.maxpacket)
        require(self.limit is None or self.limit > 0, "limit", "a positive packet count", self.limit)


class Codel(Policy):
    """CoDel (RFC 8289): drops at dequeue, spaced by interval/sqrt(count), while delay > target."""

    name = "codel"
    Params = CodelParams
    params: CodelParams
    datapaths = ("nfqueue", "kernel", "dummynet")
    per_packet = True

    def __init__(self, params: CodelParams | None = None) -> None:
        super().__init__(params)
        self.target = self.params.target_ms / 1e3
        self.interval = self.params.interval_ms / 1e3
        self.first_above_time = 0.0  # 0: sojourn not continuously above target
        self.dropping = False
        self.drop_next = 0.0
        self.count = 0
        self.lastcount = 0
        self._after: str | None = None  # "enter" / "loop": the previous packet was dropped

    def queue_config(self) -> QueueConfig:
        return QueueConfig(limit_pkts=self.params.limit)

    def update(self, state: QueueState) -> Decision:
        return Decision()  # all of CoDel happens in on_dequeue

    def control_law(self, t: float, count: int) -> float:
        return t + self.interval / math.sqrt(count)

    def on_dequeue(self, cls: str, sojourn_s: float, now: float, backlog_bytes: int) -> Action:
        ok = self._ok_to_drop(sojourn_s, now, backlog_bytes)
        after, self._after = self._after, None
        if after == "enter":  # RFC: the packet dequeued right after the first drop goes out
            action = Action.ENQUEUE
        elif self.dropping:
            action = self._while_dropping(ok, now, after == "loop")
        elif ok:
            action = self._enter_dropping(now)
        else:
            action = Action.ENQUEUE
        if backlog_bytes == 0:  # the next dequeue finds the queue empty: RFC resets both
            self.dropping, self.first_above_time, self._after = False, 0.0, None
        return action

    def _ok_to_drop(self, sojourn_s: float, now: float, backlog_bytes: int) -> bool:
        """RFC 8289 dodequeue(): true once the sojourn has been above target for an interval."""
        if sojourn_s < self.target or backlog_bytes <= self.params.maxpacket:
            self.first_above_time = 0.0
            return False
        if self.first_above_time == 0.0:
            self.first_above_time = now + self.interval
            return False
        return now >= self.first_above_time

    def _while_dropping(self, ok: bool, now: float, in_loop: bool) -> Action:
        if not ok:  # sojourn went below target: leave the dropping state
            self.dropping = False
            return Action.ENQUEUE
        if in_loop:  # RFC: schedule the next drop only once the next packet is seen above target
            self.drop_next = self.control_law(self.drop_next, self.count)
        if now < self.drop_next:
            return Action.ENQUEUE
        self.count += 1
        return self._signal("loop")

    def _enter_dropping(self, now: float) -> Action:
        self.dropping = True
        delta = self.count - self.lastcount
        # reuse the last episode's drop rate if we were dropping recently (RFC 8289 dequeue())
        self.count = delta if delta > 1 and now - self.drop_next < 16 * self.interval else 1
        self.drop_next = self.control_law(now, self.count)
        self.lastcount = self.count
        return self._signal("enter")

    def _signal(self, where: str) -> Action:
        if self.params.ecn:  # marked packets are sent: no hand-over, next signal scheduled now
            if where == "loop":
                self.drop_next = self.control_law(self.drop_next, self.count)
            return Action.MARK
        self._after = where
        return Action.DROP
