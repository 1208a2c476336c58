"""PI2: PI Improved with a Square, single queue (De Schepper, Bondarenko, Tsang, Briscoe,
"PI2: A Linearized AQM for both Classic and Scalable TCP", ACM CoNEXT 2016).

A plain PI controller (no PIE auto-tuning, no burst allowance) drives a base probability p';
squaring it for Classic traffic linearises the Reno/Cubic response (their rate goes with
1/sqrt(p)), and the same p' scaled by k drives Scalable (ECT(1), DCTCP/Prague) traffic:

    p' += alpha * (qdelay - target) + beta * (qdelay - qdelay_old)      every tupdate
    p_classic = p'^2        p_scalable = k * p'                         (k = 2: window fairness)

Defaults are those of the authors' reference qdisc (sch_pi2.c, 2015): target 20 ms, tupdate
30 ms, gains 10/16 and 100/16 Hz on the scalable probability k*p', i.e. 0.3125 and 3.125 Hz on
p' with k = 2. As there, k*p' is capped at 1 (so p_classic <= 1/k^2), p' decays by 2% per
update while the queue stays empty, and with ecn=false every packet is dropped with p'^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.base import ClassDecision, Decision, Params, Policy, QueueConfig, QueueState, require
from policies.coupled import coupled, dualq_config


@dataclass
class Pi2Params(Params):
    target_ms: float = field(default=20.0, metadata={"help": "queue delay target (ms)"})
    tupdate_ms: float = field(default=30.0, metadata={"help": "update interval (ms)"})
    alpha: float = field(default=0.3125, metadata={"help": "integral gain on p' (Hz)"})
    beta: float = field(default=3.125, metadata={"help": "proportional gain on p' (Hz)"})
    k: float = field(default=2.0, metadata={"help": "coupling: scalable p = k * p', classic p = p'^2"})
    ecn: bool = field(default=True, metadata={
        "help": "mark ECN-capable packets (ECT(1): k*p', ECT(0): p'^2); false: drop all with p'^2"})
    limit: int | None = field(default=None, metadata={
        "help": "queue limit in packets (default: the testbed's buffer)"})
    dualq: bool = field(default=False, metadata={
        "help": "run as the base AQM of a DualQ coupled AQM (policies/coupled.py)"})

    def __post_init__(self) -> None:
        for key in ("target_ms", "tupdate_ms", "k"):
            require(getattr(self, key) > 0, key, "> 0", getattr(self, key))
        for key in ("alpha", "beta"):
            require(getattr(self, key) >= 0, key, ">= 0", getattr(self, key))
        require(self.limit is None or self.limit > 0, "limit", "a positive packet count", self.limit)


class Pi2(Policy):
    """PI2 in one queue: classic p = p'^2, scalable (ECT(1)) p = k*p'."""

    name = "pi2"
    Params = Pi2Params
    params: Pi2Params

    def __init__(self, params: Pi2Params | None = None) -> None:
        super().__init__(params)
        self.prob = 0.0  # p'
        self.qdelay_old = 0.0  # seconds

    def queue_config(self) -> QueueConfig:
        if self.params.dualq:
            return dualq_config(self.params.limit, self.params.tupdate_ms / 1e3)
        return QueueConfig(dualq=False, limit_pkts=self.params.limit, tupdate_s=self.params.tupdate_ms / 1e3)

    def update(self, state: QueueState) -> Decision:
        qdelay = max(state.l4s.head_sojourn_ms, state.classic.head_sojourn_ms) / 1e3  # one queue
        prm = self.params
        p = self.prob + prm.alpha * (qdelay - prm.target_ms / 1e3) + prm.beta * (qdelay - self.qdelay_old)
        p = min(max(p, 0.0), 1.0, 1.0 / prm.k)  # k*p' <= 1, as the reference qdisc keeps it
        if qdelay == 0 and self.qdelay_old == 0:  # no queue for two updates: decay
            p *= 0.98
        self.prob = p
        self.qdelay_old = qdelay
        return self.decision()

    def decision(self) -> Decision:
        p_classic, p_scalable = self.prob ** 2, min(self.params.k * self.prob, 1.0)
        if self.params.dualq:  # the classic p'^2 (drop without ECN), L coupled to it as in DualPI2
            classic = ClassDecision(p_mark=p_classic) if self.params.ecn else ClassDecision(p_drop=p_classic)
            return coupled(classic)
        if not self.params.ecn:
            d = ClassDecision(p_drop=p_classic)
            return Decision(l4s=d, classic=d)
        return Decision(l4s=ClassDecision(p_mark=p_scalable), classic=ClassDecision(p_mark=p_classic))
