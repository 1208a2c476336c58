"""RED: Random Early Detection (Floyd & Jacobson 1993, recommended by RFC 2309), with ECN
(RFC 3168) and the "gentle" ramp (Floyd 2000).

    avg <- (1 - w_q) * avg + w_q * q                      on every arrival
    avg <- (1 - w_q)^m * avg,  m = idle_time / s          after the queue was idle
    p_b  = max_p * (avg - min_th) / (max_th - min_th)     min_th <= avg < max_th
    p_b  = max_p + (1 - max_p) * (avg - max_th) / max_th  max_th <= avg < 2 max_th (gentle)
    p_b  = 1                                              above

This policy runs every tupdate, not on every arrival, so it applies the arrivals of the
interval in one step: n arrivals that all saw the sampled queue q move avg by (1 - w_q)^n.
The decision is p_b itself; RED's per-packet spreading p_a = p_b / (1 - count * p_b) (which
roughly doubles the mean rate) is not reproduced by an independent coin per packet.

Thresholds in time (`min_ms`, `max_ms`; issue 14, item 5): thresholds in packets are a queue
delay that shrinks as the link gets faster (15 packets are 1.8 ms at 100 Mbit/s, 18 ms at 10).
Given in ms, they are turned into the queue's unit (packets of `avpkt` bytes, or bytes) at the
state's nominal link rate every update, so they stand for the same delay at any rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.base import ClassDecision, Decision, Params, Policy, QueueConfig, QueueState, require
from policies.coupled import coupled, dualq_config


@dataclass
class RedParams(Params):
    min_th: float = field(default=5.0, metadata={
        "help": "no early drop below this average queue (packets, or bytes with byte_mode)"})
    max_th: float = field(default=15.0, metadata={
        "help": "the ramp reaches max_p here (packets, or bytes with byte_mode)"})
    max_p: float = field(default=0.1, metadata={"help": "probability at max_th"})
    w_q: float = field(default=0.002, metadata={"help": "EWMA weight of one arrival"})
    gentle: bool = field(default=True, metadata={
        "help": "ramp from max_p to 1 between max_th and 2*max_th instead of jumping to 1"})
    byte_mode: bool = field(default=False, metadata={
        "help": "measure the queue in bytes (thresholds in bytes) instead of packets"})
    avpkt: int = field(default=1000, metadata={
        "help": "typical packet size in bytes: sets the idle-time decay (tc-red avpkt)"})
    ecn: bool = field(default=True, metadata={
        "help": "CE-mark ECN-capable packets instead of dropping them"})
    harddrop: bool = field(default=False, metadata={
        "help": "drop even ECN-capable packets once p reaches 1 (tc-red harddrop)"})
    limit: int | None = field(default=None, metadata={
        "help": "queue limit in packets (default: the testbed's buffer)"})
    min_ms: float | None = field(default=None, metadata={
        "help": "min_th as queue delay at the link rate (ms; with max_ms, replaces min_th/max_th)"})
    max_ms: float | None = field(default=None, metadata={
        "help": "max_th as queue delay at the link rate (ms; with min_ms)"})
    dualq: bool = field(default=False, metadata={
        "help": "run as the base AQM of a DualQ coupled AQM (policies/coupled.py)"})

    def __post_init__(self) -> None:
        require(0 <= self.min_th < self.max_th, "max_th", f"> min_th ({self.min_th}) >= 0", self.max_th)
        require((self.min_ms is None) == (self.max_ms is None), "max_ms",
                "min_ms and max_ms given together", self.max_ms)
        if self.min_ms is not None and self.max_ms is not None:
            require(0 <= self.min_ms < self.max_ms, "max_ms", f"> min_ms ({self.min_ms}) >= 0", self.max_ms)
        require(0 < self.max_p <= 1, "max_p", "a probability in (0, 1]", self.max_p)
        require(0 < self.w_q <= 1, "w_q", "a weight in (0, 1]", self.w_q)
        require(self.avpkt > 0, "avpkt", "a positive size in bytes", self.avpkt)
        require(self.limit is None or self.limit > 0, "limit", "a positive packet count", self.limit)


class Red(Policy):
    """RED with ECN and the gentle ramp; p grows linearly with the average queue."""

    name = "red"
    Params = RedParams
    params: RedParams

    def __init__(self, params: RedParams | None = None) -> None:
        super().__init__(params)
        self.avg = 0.0  # average queue, in packets or bytes
        # thresholds in the queue's unit; with min_ms/max_ms set anew from each state's link rate
        self.min_th, self.max_th = self.params.min_th, self.params.max_th

    def queue_config(self) -> QueueConfig:
        if self.params.dualq:  # RED has no tick of its own: the base QueueConfig's
            return dualq_config(self.params.limit, QueueConfig().tupdate_s)
        return QueueConfig(limit_pkts=self.params.limit)

    def update(self, state: QueueState) -> Decision:
        self.min_th, self.max_th = self.thresholds(state.link_rate_bps)
        self.avg = self._average(state)
        p = self.probability(self.avg)
        hard = p >= 1.0 and self.params.harddrop
        # p_mark: the datapath marks ECN-capable packets and drops Not-ECT ones
        d = ClassDecision(p_mark=p) if self.params.ecn and not hard else ClassDecision(p_drop=p)
        return coupled(d) if self.params.dualq else Decision(l4s=d, classic=d)

    def _average(self, state: QueueState) -> float:
        p = self.params
        pkts = state.l4s.backlog_pkts + state.classic.backlog_pkts
        q = state.total_backlog_bytes() if p.byte_mode else pkts
        arrivals = state.l4s.arrivals + state.classic.arrivals
        if q == 0 and arrivals == 0:  # idle all interval: decay as if m small packets had passed
            m = state.dt * state.link_rate_bps / (8 * p.avpkt) if state.link_rate_bps > 0 else 0.0
            return self.avg * (1 - p.w_q) ** m
        return q + (self.avg - q) * (1 - p.w_q) ** arrivals

    def thresholds(self, link_rate_bps: float) -> tuple[float, float]:
        """(min_th, max_th) in the queue's unit: the packet (or byte) ones, or min_ms/max_ms as
        the backlog that takes that long to send at `link_rate_bps`."""
        p = self.params
        if p.min_ms is None or p.max_ms is None:
            return p.min_th, p.max_th
        unit_bits = 8 if p.byte_mode else 8 * p.avpkt
        per_ms = link_rate_bps / 1e3 / unit_bits
        return p.min_ms * per_ms, p.max_ms * per_ms

    def probability(self, avg: float) -> float:
        """p_b for an average queue `avg` (the RED ramp, gentle or not)."""
        p, lo, hi = self.params, self.min_th, self.max_th
        if avg < lo:
            return 0.0
        if avg < hi:
            return p.max_p * (avg - lo) / (hi - lo)
        if p.gentle and avg < 2 * hi:
            return p.max_p + (1 - p.max_p) * (avg - hi) / hi
        return 1.0
