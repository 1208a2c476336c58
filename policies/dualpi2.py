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

Arithmetic (`arithmetic`): 'kernel' (the default) runs p' as sch_dualpi2 does, a u32 updated in
integers with the gains as the kernel holds them (policies/dualpi2_kernel.py: tc's 1/256 Hz
units, the kernel's rescaling per 64 ns, truncations, the coin's (p+1)/2^32); 'float' runs the
equations above in doubles with the nominal gains. `effective_gains()` says what runs.

The decision also carries what sch_dualpi2 does per packet, for the datapath to apply: the coin
at dequeue (drop_early false, Linux's default), the step in time or in packets, min_qlen_step.
Linux neither marks nor drops on p' while the total backlog is below 2 MTU (the datapath's
min_backlog), and drops a Not-ECT packet that the step catches in the L queue (do_step_aqm()).
Every behaviour, and which datapath matches it: policies/DUALPI2.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies import dualpi2_kernel as kern
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
    arithmetic: str = field(default="kernel", metadata={
        "help": "'kernel': sch_dualpi2's integers (gains as tc/the kernel truncate them); 'float'"})
    step_thresh_pkts: int | None = field(default=None, metadata={
        "help": "step in packets (tc step_thresh Np): mark when more remain in L (overrides ms)"})
    min_qlen_step: int = field(default=0, metadata={
        "help": "step only packets that found at least this many packets in L (tc min_qlen_step)"})
    drop_early: bool = field(default=False, metadata={
        "help": "toss the coin at enqueue (tc drop_enqueue); false: at dequeue, as Linux"})

    def __post_init__(self) -> None:
        # What tc would send the kernel for alpha and beta, in 1/256 Hz (dualpi2_kernel.py):
        # the nominal 0.16 and 3.2 stand for the kernel's own defaults (41 and 819, what runs
        # when tc is given no alpha/beta); any other value goes through tc's float conversion.
        to256 = kern.tc_alpha_beta
        if self.typical_rtt_ms is not None or self.max_rtt_ms is not None:
            self.target_ms, self.tupdate_ms, self.alpha, self.beta = rtt_derived(
                self.typical_rtt_ms, self.max_rtt_ms)
            to256 = kern.tc_rtt_alpha_beta
        self.alpha256 = kern.KERNEL_DEFAULT_A256 if self.alpha == 0.16 else to256(self.alpha)
        self.beta256 = kern.KERNEL_DEFAULT_B256 if self.beta == 3.2 else to256(self.beta)
        require(self.arithmetic in ("kernel", "float"), "arithmetic", "'kernel' or 'float'",
                self.arithmetic)
        if self.arithmetic == "kernel":
            for key in ("alpha", "beta"):  # the kernel's netlink policy: 1 .. ALPHA_BETA_MAX
                v = getattr(self, key + "256")
                require(1 <= v <= ALPHA_BETA_MAX, key, f"a gain tc sends as 1..{ALPHA_BETA_MAX} "
                        "in 1/256 Hz (>= 0.00390625)", getattr(self, key))
            require(float(self.coupling_factor).is_integer() and 1 <= self.coupling_factor <= 255,
                    "coupling_factor", "an integer 1..255 (a u8 in sch_dualpi2)", self.coupling_factor)
        require(self.step_thresh_pkts is None or self.step_thresh_pkts >= 0, "step_thresh_pkts",
                "a packet count >= 0", self.step_thresh_pkts)
        require(self.min_qlen_step >= 0, "min_qlen_step", "a packet count >= 0", self.min_qlen_step)
        require(self.limit > 0, "limit", "a positive packet count", self.limit)
        for key in ("target_ms", "tupdate_ms", "coupling_factor"):
            require(getattr(self, key) > 0, key, "> 0", getattr(self, key))
        for key in ("alpha", "beta", "step_thresh_ms"):
            require(getattr(self, key) >= 0, key, ">= 0", getattr(self, key))
        require(0 <= self.c_protection <= 1, "c_protection", "a share in [0, 1]", self.c_protection)
        require(self.qdelay in ("max", "classic"), "qdelay", "'max' or 'classic'", self.qdelay)


def per_packet(prm: DualPi2Params) -> tuple[dict[str, Any], dict[str, Any]]:
    """What sch_dualpi2 does per packet, as ClassDecision fields: (the L queue's: the step and
    the coin's timing, the C queue's: the coin's timing). Shared with policies/coupled.py, so a
    PIE, PI2 or RED base AQM in DualQ runs the very same L4S step as DualPI2."""
    step = dict(step_threshold_ms=None if prm.step_thresh_pkts is not None else prm.step_thresh_ms,
                step_threshold_pkts=prm.step_thresh_pkts, min_qlen_step=prm.min_qlen_step,
                coin_at_dequeue=not prm.drop_early)
    return step, dict(coin_at_dequeue=not prm.drop_early)


class DualPi2(Policy):
    """DualPI2 (RFC 9332, Linux sch_dualpi2): coupled L and C queues, p_C = p'^2, p_L = k*p'."""

    name = "dualpi2"
    Params = DualPi2Params
    params: DualPi2Params
    # Where a datapath cannot do what sch_dualpi2 does (policies/DUALPI2.md); printed by
    # `testbed policies`
    datapath_notes = {
        "ebpf": "coin tossed at enqueue whatever drop_early says (tc BPF runs before the qdisc); "
                "step on the sojourn predicted at enqueue (wait for the link's bucket + L "
                "backlog), in time only (step_thresh_pkts, min_qlen_step refused); L/C by HTB "
                "priority with a guaranteed C share, not the WRR credit (policies/DUALPI2.md)",
        "nfqueue": "all of policies/DUALPI2.md but WRR credit for a packet dropped at dequeue "
                   "(counted here, not in Linux) and GSO (none: offloads are off)",
    }

    def __init__(self, params: DualPi2Params | None = None) -> None:
        super().__init__(params)
        prm = self.params
        self.prob = 0.0  # p' in [0, 1]
        self.qdelay_old = 0.0  # seconds (float arithmetic)
        # kernel arithmetic: p' as a u32, delays in ns, gains as sch_dualpi2 holds them
        self.prob_u32 = 0
        self.last_qdelay_ns = 0
        self.alpha_int = kern.scale_alpha_beta(prm.alpha256)
        self.beta_int = kern.scale_alpha_beta(prm.beta256)
        self.target_ns = int(round(prm.target_ms * 1000)) * 1000  # tc sends whole us

    def effective_gains(self) -> dict[str, float | int | str]:
        """The gains that run: as tc prints them, and as the controller applies them (Hz)."""
        prm = self.params
        if prm.arithmetic == "float":
            return {"arithmetic": "float", "alpha_hz": prm.alpha, "beta_hz": prm.beta}
        return {"arithmetic": "kernel", "alpha256": prm.alpha256, "beta256": prm.beta256,
                "alpha_int": self.alpha_int, "beta_int": self.beta_int,
                "tc_alpha": kern.tc_printed(kern.unscale_alpha_beta(self.alpha_int)),
                "tc_beta": kern.tc_printed(kern.unscale_alpha_beta(self.beta_int)),
                "alpha_hz": kern.applied_hz(self.alpha_int), "beta_hz": kern.applied_hz(self.beta_int)}

    def queue_config(self) -> QueueConfig:
        p = self.params
        return QueueConfig(dualq=True, c_protection=p.c_protection, limit_pkts=p.limit,
                           tupdate_s=p.tupdate_ms / 1e3)

    def update(self, state: QueueState) -> Decision:
        prm = self.params
        qdelay = state.classic.head_sojourn_ms / 1e3
        if prm.qdelay == "max":
            qdelay = max(qdelay, state.l4s.head_sojourn_ms / 1e3)
        if prm.arithmetic == "kernel":
            qdelay_ns = round(qdelay * 1e9)  # the state carries whole ns as float ms
            self.prob_u32 = kern.calculate_probability(
                self.prob_u32, qdelay_ns, self.last_qdelay_ns, self.target_ns, self.alpha_int,
                self.beta_int, prm.drop_overload, int(prm.coupling_factor))
            self.last_qdelay_ns = qdelay_ns
            self.prob = self.prob_u32 / kern.MAX_PROB
            return self.decision()
        p = self.prob + prm.alpha * (qdelay - prm.target_ms / 1e3) + prm.beta * (qdelay - self.qdelay_old)
        cap = 1.0 if prm.drop_overload else 1.0 / prm.coupling_factor  # Linux: min(p, MAX_PROB / k)
        self.prob = min(max(p, 0.0), cap)
        self.qdelay_old = qdelay
        return self.decision()

    def decision(self) -> Decision:
        """The per-class distribution for the current p'."""
        prm = self.params
        if prm.arithmetic == "kernel":
            # must_drop(): classic rolls twice, L once on prob * k (a u64); overload when
            # prob * k > MAX_PROB
            local = self.prob_u32 * int(prm.coupling_factor)
            overload = local > kern.MAX_PROB
            p_c = kern.roll_probability(self.prob_u32) ** 2
            p_cl = 2.0 if overload else kern.roll_probability(local)
        else:
            p_c = self.prob ** 2
            p_cl = prm.coupling_factor * self.prob
            overload = p_cl > 1.0  # only reachable with drop_overload
        step, coin = per_packet(prm)
        if overload:  # ECN off in C, L drops with p_C and marks the rest (dualpi2_scalable_marking)
            return Decision(l4s=ClassDecision(p_drop=p_c, p_mark=1.0 - p_c, **step),
                            classic=ClassDecision(p_drop=p_c, **coin))
        return Decision(l4s=ClassDecision(p_mark=p_cl, **step),
                        classic=ClassDecision(p_mark=p_c, **coin))  # Not-ECT classic packets are dropped
