"""DualPI2: the DualQ Coupled AQM of RFC 9332 with a PI2 base AQM, as Linux sch_dualpi2 runs it.

Two queues: L (ECT(1) and CE) and C (the rest), served by a weighted scheduler that guarantees
the C queue `c_protection` of the link. Every tupdate a PI controller updates the base
probability p' (Linux calculate_probability(); RFC 9332 App. A.1 dualpi2_update()):

    p' += alpha * (qdelay - target) + beta * (qdelay - qdelay_old)     alpha, beta in Hz, delays in s

The gains are applied per update as they are: RFC 9332 folds Tupdate into alpha
(alpha = 0.1 * Tupdate / RTT_max^2), and the kernel adds (qdelay - target) * alpha each tick.

    p_C  = p'^2                         Classic: drop, or CE-mark if ECT(0)
    p_CL = k * p'                       coupled L4S marking
    p_L  = max(p_CL, step)              the L queue's native AQM: mark every packet whose
                                        sojourn exceeds step_thresh (the datapath's step)

qdelay: Linux takes max(L head age, C head age), so unresponsive traffic piling up in the L
queue raises p' too; RFC 9332 App. A.1 uses the C queue's only (curq = cq.time()). The
`qdelay` parameter picks one; the default follows Linux.

Overload (k * p' > 1, i.e. p_C > 1/k^2; RFC 9332 sec. 4.2.3 and App. A.2, Linux must_drop()):
with drop_overload the C queue drops even ECT packets with p_C, and the L queue drops with p_C
and CE-marks the rest. Without it, p' is capped at 1/k so neither queue ever drops on the
coupled probability and the queue overflows instead (tail drop at `limit`).

Left to the datapath, as a decision cannot say them: Linux neither marks nor drops on p' while
the total backlog is below 2 MTU, tosses the PI coin at dequeue (drop_dequeue), and drops a
Not-ECT packet that the step catches in the L queue (do_step_aqm()).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies.base import (
    ClassDecision,
    Decision,
    ParamError,
    Params,
    Policy,
    QueueConfig,
    QueueState,
    require,
)

RTT_TYP_TO_MAX = 6  # iproute2 tc/q_dualpi2.c
ALPHA_BETA_MAX = (2 << 23) - 1  # tc's bound on alpha/beta (in 1/256 Hz units, see below)
ALPHA_BETA_SCALE = 256  # tc sends alpha and beta to the kernel in units of 1/256 Hz
_F01, _F03 = float(np.float32(0.1)), float(np.float32(0.3))  # C's 0.1f and 0.3f, widened


def rtt_derived(typical_rtt_ms: float | None, max_rtt_ms: float | None) -> tuple[float, float, float, float]:
    """(target_ms, tupdate_ms, alpha, beta) from the typical and maximum RTT, exactly as tc does.

    iproute2 tc/q_dualpi2.c, dualpi2_parse_opt() (times in integer microseconds, uint32):

        if (!rtt_typ)
            rtt_typ = max(rtt_max / RTT_TYP_TO_MAX, 1U);
        else if (!rtt_max)
            rtt_max = rtt_typ * RTT_TYP_TO_MAX;
        else if (rtt_typ > rtt_max)
            -> error "typical_rtt must be <= max_rtt!"
        target = rtt_typ;
        tupdate = (double)rtt_typ < (double)rtt_max / 3.0f ? rtt_typ : (double)rtt_max / 3.0f;
        tupdate = max(tupdate, 1U);
        alpha_f = (double)tupdate / rtt_max / rtt_max * TIME_UNITS_PER_SEC * 0.1f;
        beta_f = 0.3f / (double)rtt_max * TIME_UNITS_PER_SEC;

    which is RFC 9332 App. A.1 (Tupdate = min(target, RTT_max/3), alpha = 0.1 * Tupdate /
    RTT_max^2, beta = 0.3 / RTT_max) with target = typical RTT. The returned alpha and beta are
    the alpha_f and beta_f tc prints; tc then sends int(x * 256) to the kernel.
    """
    typ = int(typical_rtt_ms * 1000) if typical_rtt_ms else 0  # get_time(): double -> u32 us
    mx = int(max_rtt_ms * 1000) if max_rtt_ms else 0
    if not typ and not mx:
        raise ParamError("parameter 'max_rtt_ms': give max_rtt_ms and/or typical_rtt_ms")
    if not typ:
        typ = max(mx // RTT_TYP_TO_MAX, 1)
    elif not mx:
        mx = typ * RTT_TYP_TO_MAX
    elif typ > mx:
        raise ParamError(f"parameter 'typical_rtt_ms': must be <= max_rtt_ms, got {typical_rtt_ms} > "
                         f"{max_rtt_ms}")
    tupdate = max(int(typ if typ < mx / 3.0 else mx / 3.0), 1)
    alpha = tupdate / mx / mx * 1e6 * _F01
    beta = _F03 / mx * 1e6
    if beta > ALPHA_BETA_MAX:
        raise ParamError(f"parameter 'max_rtt_ms': {max_rtt_ms} is too low, beta would overflow")
    if alpha < 1 / ALPHA_BETA_SCALE or beta < 1 / ALPHA_BETA_SCALE:
        raise ParamError(f"parameter 'max_rtt_ms': {max_rtt_ms} is too large, alpha={alpha:f} "
                         f"beta={beta:f} round down to 0")
    return typ / 1000, tupdate / 1000, alpha, beta


@dataclass
class DualPi2Params(Params):
    limit: int = field(default=10000, metadata={"help": "packets, both queues together"})
    target_ms: float = field(default=15.0, metadata={"help": "C queue delay target (ms)"})
    tupdate_ms: float = field(default=16.0, metadata={"help": "update interval (ms)"})
    alpha: float = field(default=0.16, metadata={"help": "integral gain (Hz)"})
    beta: float = field(default=3.2, metadata={"help": "proportional gain (Hz)"})
    typical_rtt_ms: float | None = field(default=None, metadata={
        "help": "derive target, tupdate, alpha, beta as tc-dualpi2 does (overrides them)"})
    max_rtt_ms: float | None = field(default=None, metadata={
        "help": "derive target, tupdate, alpha, beta as tc-dualpi2 does (overrides them)"})
    coupling_factor: float = field(default=2.0, metadata={"help": "k: p_CL = k * p'"})
    step_thresh_ms: float = field(default=1.0, metadata={
        "help": "L queue native AQM: CE-mark every packet whose sojourn exceeds this (ms)"})
    c_protection: float = field(default=0.10, metadata={
        "help": "share of the link the scheduler guarantees the C queue (tc classic_protection)"})
    drop_overload: bool = field(default=True, metadata={
        "help": "on overload drop in both queues (true) or cap p' and let the queue overflow"})
    qdelay: str = field(default="max", metadata={
        "help": "PI input: 'max' of the L and C head delays (Linux) or 'classic' (RFC 9332 App. A.1)"})

    def __post_init__(self) -> None:
        if self.typical_rtt_ms is not None or self.max_rtt_ms is not None:
            self.target_ms, self.tupdate_ms, self.alpha, self.beta = rtt_derived(
                self.typical_rtt_ms, self.max_rtt_ms)
        require(self.limit > 0, "limit", "a positive packet count", self.limit)
        for key in ("target_ms", "tupdate_ms", "coupling_factor"):
            require(getattr(self, key) > 0, key, "> 0", getattr(self, key))
        for key in ("alpha", "beta", "step_thresh_ms"):
            require(getattr(self, key) >= 0, key, ">= 0", getattr(self, key))
        require(0 <= self.c_protection <= 1, "c_protection", "a share in [0, 1]", self.c_protection)
        require(self.qdelay in ("max", "classic"), "qdelay", "'max' or 'classic'", self.qdelay)


class DualPi2(Policy):
    """DualPI2 (RFC 9332, Linux sch_dualpi2): coupled L and C queues, p_C = p'^2, p_L = k*p'."""

    name = "dualpi2"
    Params = DualPi2Params
    params: DualPi2Params

    def __init__(self, params: DualPi2Params | None = None) -> None:
        super().__init__(params)
        self.prob = 0.0  # p'
        self.qdelay_old = 0.0  # seconds

    def queue_config(self) -> QueueConfig:
        p = self.params
        return QueueConfig(dualq=True, c_protection=p.c_protection, limit_pkts=p.limit,
                           tupdate_s=p.tupdate_ms / 1e3)

    def update(self, state: QueueState) -> Decision:
        prm = self.params
        qdelay = state.classic.head_sojourn_ms / 1e3
        if prm.qdelay == "max":
            qdelay = max(qdelay, state.l4s.head_sojourn_ms / 1e3)
        p = self.prob + prm.alpha * (qdelay - prm.target_ms / 1e3) + prm.beta * (qdelay - self.qdelay_old)
        cap = 1.0 if prm.drop_overload else 1.0 / prm.coupling_factor  # Linux: min(p, MAX_PROB / k)
        self.prob = min(max(p, 0.0), cap)
        self.qdelay_old = qdelay
        return self.decision()

    def decision(self) -> Decision:
        """The per-class distribution for the current p'."""
        p_c = self.prob ** 2
        p_cl = self.params.coupling_factor * self.prob
        step = self.params.step_thresh_ms
        if p_cl > 1.0:  # overload (only reachable with drop_overload): ECN off, drop with p_C
            return Decision(l4s=ClassDecision(p_drop=p_c, p_mark=1.0 - p_c, step_threshold_ms=step),
                            classic=ClassDecision(p_drop=p_c))
        return Decision(l4s=ClassDecision(p_mark=p_cl, step_threshold_ms=step),
                        classic=ClassDecision(p_mark=p_c))  # Not-ECT classic packets are dropped
