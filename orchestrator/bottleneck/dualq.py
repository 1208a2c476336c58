"""The L and C queues of a DualQ bottleneck and the scheduler between them (RFC 9332, as
Linux sch_dualpi2 runs it), or one FIFO for single-queue policies. Pure: no I/O, no clock."""

from __future__ import annotations

import math
from collections import deque

L, C = 0, 1  # queue indices, equal to the telemetry's cls codes
WIRE_MTU = 1514  # Linux psched_mtu() of a 1500-byte Ethernet device
INF = math.inf

# A queued packet: (t_arrival, wire bytes, cls, ecn at arrival, action so far, packet, payload)
Entry = tuple


class DualQueue:
    """The L and C queues with sch_dualpi2's scheduler, or one FIFO when dualq is False.

    WRR credit (as sch_dualpi2): while both queues hold packets, a dequeue from L adds
    wc * bytes and one from C subtracts wl * bytes (wc = c_protection in %, wl = 100 - wc);
    L goes when the credit is <= 0. So under load C gets wc / 100 of the bytes and L the rest.
    The credit resets to MTU * (wc - wl) (L first) when both queues are empty.
    """

    def __init__(self, dualq: bool = True, c_protection: float = 0.10) -> None:
        self.dualq = dualq
        self.q: tuple[deque, deque] = (deque(), deque()) if dualq else (deque(),) * 2
        self.wc = round(100 * c_protection)
        self.wl = 100 - self.wc
        self.credit_init = WIRE_MTU * (self.wc - self.wl)
        self.credit = self.credit_init
        self.pkts = [0, 0]  # per class, also in FIFO mode
        self.bytes = [0, 0]
        self.total_pkts = self.total_bytes = 0  # plain fields: read for every arriving packet

    def __len__(self) -> int:
        return self.total_pkts

    def push(self, entry: Entry) -> None:
        cls = entry[2]
        self.q[cls].append(entry)
        self.pkts[cls] += 1
        self.bytes[cls] += entry[1]
        self.total_pkts += 1
        self.total_bytes += entry[1]

    def pop(self, free_at: float, horizon: float = INF) -> tuple[Entry, float] | None:
        """The next packet to send and its virtual start time; None when both queues are
        empty or the start would lie beyond `horizon`.

        Only packets that had arrived by the start time compete, so catching up after a late
        wake-up picks the packet the link would have picked then. That needs every packet that
        arrived before the start to be here: the caller passes as `horizon` the arrival of the
        last packet it has read (or now, once it has read everything)."""
        lq, cq = self.q
        lh = lq[0][0] if lq else INF
        ch = cq[0][0] if cq else INF
        if lh == INF and ch == INF:
            self.credit = self.credit_init
            return None
        start = max(free_at, min(lh, ch))
        if start > horizon:
            return None
        if not self.dualq:
            entry = cq.popleft()
        else:
            has_l, has_c = lh <= start, ch <= start
            if has_l and (not has_c or self.credit <= 0):
                entry = lq.popleft()
                if has_c:
                    self.credit += self.wc * entry[1]
            else:
                entry = cq.popleft()
                if has_l:
                    self.credit -= self.wl * entry[1]
        cls = entry[2]
        self.pkts[cls] -= 1
        self.bytes[cls] -= entry[1]
        self.total_pkts -= 1
        self.total_bytes -= entry[1]
        return entry, start

    def head_arrival(self, cls: int) -> float | None:
        """Arrival time of the oldest packet of the class's queue (in FIFO mode: the FIFO's)."""
        q = self.q[cls]
        return q[0][0] if q else None

    def drain(self) -> list[Entry]:
        out = list(self.q[L]) + ([] if not self.dualq else list(self.q[C]))
        for q in self.q:
            q.clear()
        self.pkts, self.bytes = [0, 0], [0, 0]
        self.total_pkts = self.total_bytes = 0
        return out
