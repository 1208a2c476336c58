"""A single-queue AQM (PIE, PI2, RED) as the base AQM of a DualQ Coupled AQM (RFC 9332).

Why (issue 14, item 5): the experience pool came from single-FIFO behaviours while AQM-LLM
is deployed in DualQ, so the pool showed queues the deployed system never has. With
`dualq: true` those behaviours run in the queues DualPI2 runs in, coupled as DualPI2 couples:

    p_C = the base AQM's own classic probability (drop, or mark as the base AQM decides)
    p_L = min(1, k * sqrt(p_C))      k = 2, DualPI2's coupling factor (p_CL = k p', p_C = p'^2)
          plus DualPI2's native L4S AQM: the step on the L queue's sojourn

with DualPI2's scheduler share (c_protection), the coin at dequeue, and its step threshold,
all taken from DualPi2Params' defaults and DualPI2's own per_packet(), so the two cannot drift.
The cap at 1 stands for DualPI2's overload rule: L4S traffic is marked, never dropped, here.

Design: a `dualq` parameter on each base AQM calling these two functions, not a wrapper
policy. A parameter already travels everywhere a policy goes (to_config to the router's
process, the run manifest, --policy-arg, the kernel datapath's refusal of what tc cannot do)
and keeps the policy's name, which the pool uses to say which behaviour an episode ran; a
wrapper would need its own serialisation, as exploration noise has.

What the base AQM sees does not change: PIE and PI2 take max(L head age, C head age), which
in one queue is the age of its head and in DualQ is exactly Linux sch_dualpi2's default
qdelay ('max'); RED averages the total backlog of both queues. The update interval stays the
base AQM's own (its gains are tuned for it); `dt` is not a model feature (features.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

from policies.base import ClassDecision, Decision, QueueConfig
from policies.dualpi2 import DualPi2Params, per_packet

_DUALPI2 = DualPi2Params()
K = _DUALPI2.coupling_factor  # 2.0


def coupled(classic: ClassDecision) -> Decision:
    """The DualQ decision for a base AQM whose classic decision is `classic`."""
    step, coin = per_packet(_DUALPI2)
    p_c = classic.p_drop + classic.p_mark
    p_l = min(1.0, K * math.sqrt(p_c))
    return Decision(l4s=ClassDecision(p_mark=p_l, **step), classic=replace(classic, **coin))


def dualq_config(limit_pkts: int | None, tupdate_s: float) -> QueueConfig:
    """DualPI2's queues (L and C, its scheduler's C share) with the base AQM's limit and tick."""
    return QueueConfig(dualq=True, c_protection=_DUALPI2.c_protection, limit_pkts=limit_pkts,
                       tupdate_s=tupdate_s)
