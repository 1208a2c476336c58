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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.base import ClassDecision, Decision, Params, Policy, QueueConfig, QueueState, require


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

    def __post_init__(self) -> None:
        require(0 <= self.min_th < self.max_th, "max_th", f"> min_th ({self.min_th}) >= 0", self.max_th)
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

    def queue_config(self) -> QueueConfig:
        return QueueConfig(limit_pkts=self.params.limit)

    def update(self, state: QueueState) -> Decision:
        self.avg = self._average(state)
        p = self.probability(self.avg)
        hard = p >= 1.0 and self.params.harddrop
        # p_mark: the datapath marks ECN-capable packets and drops Not-ECT ones
        d = ClassDecision(p_mark=p) if self.params.ecn and not hard else ClassDecision(p_drop=p)
        return Decision(l4s=d, classic=d)

    def _average(self, state: QueueState) -> float:
        p = self.params
        pkts = state.l4s.backlog_pkts + state.classic.backlog_pkts
        q = state.total_backlog_bytes() if p.byte_mode else pkts
        arrivals = state.l4s.arrivals + state.classic.arrivals
        if q == 0 and arrivals == 0:  # idle all interval: decay as if m small packets had passed
            m = state.dt * state.link_rate_bps / (8 * p.avpkt) if state.link_rate_bps > 0 else 0.0
            return self.avg * (1 - p.w_q) ** m
        return q + (self.avg - q) * (1 - p.w_q) ** arrivals

    def probability(self, avg: float) -> float:
        """p_b for an average queue `avg` (the RED ramp, gentle or not)."""
        p = self.params
        if avg < p.min_th:
            return 0.0
        if avg < p.max_th:
            return p.max_p * (avg - p.min_th) / (p.max_th - p.min_th)
        if p.gentle and avg < 2 * p.max_th:
            return p.max_p + (1 - p.max_p) * (avg - p.max_th) / p.max_th
        return 1.0
