"""PIE: Proportional Integral controller Enhanced (RFC 8033), one queue for all traffic.

Every tupdate (RFC 8033 sec. 4.2):

    p = alpha * (qdelay - target) + beta * (qdelay - qdelay_old)     alpha, beta in Hz, delays in s
    p /= 2048, 512, 128, 32, 8, 2 while drop_prob < 1e-6, 1e-5, ... 0.1   (auto-tuning of the gains)
    drop_prob += p;  drop_prob *= 0.98 if qdelay == qdelay_old == 0;  clamp to [0, 1]

and per packet (drop_early, sec. 4.1 and 4.4): no early drop while burst allowance is left, nor
while qdelay_old < target/2 and drop_prob < 0.2; with ECN, ECN-capable packets are marked while
drop_prob <= 10% and dropped above (sec. 5.1). The burst allowance (max_burst) is consumed one
tupdate per update and refilled once drop_prob is 0 and both delays are below target/2.

The queue delay is the age of the head packet (the timestamp method): PIE is one queue, so
the older of the two classes' heads. Optional parts of RFC 8033 left out: derandomization
(sec. 5.4), the active/inactive states, and Linux's "never drop below 2 MTU of backlog"
(a per-packet rule a decision cannot express).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.base import ClassDecision, Decision, Params, Policy, QueueConfig, QueueState, require
from policies.coupled import coupled, dualq_config

# RFC 8033 sec. 4.2: below each bound the PI increment is divided by the factor
_AUTOTUNE = ((1e-6, 2048), (1e-5, 512), (1e-4, 128), (1e-3, 32), (1e-2, 8), (1e-1, 2))


@dataclass
class PieParams(Params):
    target_ms: float = field(default=15.0, metadata={"help": "queue delay target QDELAY_REF (ms)"})
    tupdate_ms: float = field(default=15.0, metadata={"help": "update interval T_UPDATE (ms)"})
    alpha: float = field(default=0.125, metadata={"help": "integral gain (Hz)"})
    beta: float = field(default=1.25, metadata={"help": "proportional gain (Hz)"})
    max_burst_ms: float = field(default=150.0, metadata={
        "help": "burst allowance: no early drop for this long after the queue was calm (ms)"})
    ecn: bool = field(default=True, metadata={
        "help": "CE-mark ECN-capable packets while drop_prob <= mark_ecnth"})
    mark_ecnth: float = field(default=0.1, metadata={
        "help": "above this drop_prob, ECN-capable packets are dropped too"})
    cap_drop: bool = field(default=True, metadata={
        "help": "RFC 8033 cap drop adjustment: p grows at most 2%/update once it is >= 10%"})
    limit: int | None = field(default=None, metadata={
        "help": "queue limit in packets (default: the testbed's buffer)"})
    dualq: bool = field(default=False, metadata={
        "help": "run as the base AQM of a DualQ coupled AQM (policies/coupled.py)"})

    def __post_init__(self) -> None:
        for key in ("target_ms", "tupdate_ms"):
            require(getattr(self, key) > 0, key, "> 0", getattr(self, key))
        for key in ("alpha", "beta", "max_burst_ms"):
            require(getattr(self, key) >= 0, key, ">= 0", getattr(self, key))
        require(0 <= self.mark_ecnth <= 1, "mark_ecnth", "a probability", self.mark_ecnth)
        require(self.limit is None or self.limit > 0, "limit", "a positive packet count", self.limit)


class Pie(Policy):
    """PIE (RFC 8033): a PI controller on queue delay with auto-tuned gains and burst allowance."""

    name = "pie"
    datapaths = ("nfqueue", "ebpf", "kernel", "dummynet")
    Params = PieParams
    params: PieParams

    def __init__(self, params: PieParams | None = None) -> None:
        super().__init__(params)
        self.drop_prob = 0.0
        self.qdelay_old = 0.0  # seconds
        self.burst_allowance_ms = self.params.max_burst_ms  # in ms: exact for whole-ms settings

    def queue_config(self) -> QueueConfig:
        if self.params.dualq:
            return dualq_config(self.params.limit, self.params.tupdate_ms / 1e3)
        return QueueConfig(dualq=False, limit_pkts=self.params.limit, tupdate_s=self.params.tupdate_ms / 1e3)

    def update(self, state: QueueState) -> Decision:
        qdelay = max(state.l4s.head_sojourn_ms, state.classic.head_sojourn_ms) / 1e3
        self._calculate_drop_prob(qdelay)
        d = self._class_decision()
        return coupled(d) if self.params.dualq else Decision(l4s=d, classic=d)

    def _calculate_drop_prob(self, qdelay: float) -> None:
        prm, target = self.params, self.params.target_ms / 1e3
        p = prm.alpha * (qdelay - target) + prm.beta * (qdelay - self.qdelay_old)
        p /= next((div for bound, div in _AUTOTUNE if self.drop_prob < bound), 1)
        if prm.cap_drop and self.drop_prob >= 0.1 and p > 0.02:
            p = 0.02
        self.drop_prob += p
        if qdelay == 0 and self.qdelay_old == 0:  # no queue for two updates: decay exponentially
            self.drop_prob *= 0.98
        self.drop_prob = min(max(self.drop_prob, 0.0), 1.0)
        self.burst_allowance_ms = max(0.0, self.burst_allowance_ms - prm.tupdate_ms)
        if self.drop_prob == 0 and qdelay < target / 2 and self.qdelay_old < target / 2:
            self.burst_allowance_ms = prm.max_burst_ms
        self.qdelay_old = qdelay

    def _class_decision(self) -> ClassDecision:
        """What drop_early() would do to each packet until the next update."""
        p, prm = self.drop_prob, self.params
        calm = self.qdelay_old < prm.target_ms / 2e3 and p < 0.2
        if self.burst_allowance_ms > 0 or calm:
            return ClassDecision()
        if prm.ecn and p <= prm.mark_ecnth:
            return ClassDecision(p_mark=p)  # the datapath drops Not-ECT packets that draw a mark
        return ClassDecision(p_drop=p)
