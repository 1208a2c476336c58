"""The per-packet rules of Linux sch_dualpi2 at dequeue that the nfqueue link applies when a
decision asks for them (policies/DUALPI2.md): the coin tossed at dequeue (drop_dequeue, Linux's
default) and the step threshold in time or in packets. Pure: no I/O, no clock."""

from __future__ import annotations

from random import random
from typing import Any

from orchestrator.bottleneck.ecn import is_tcp_syn
from policies.base import Action

ENQUEUE, DROP, MARK = int(Action.ENQUEUE), int(Action.DROP), int(Action.MARK)


def dequeue_coin(link: Any, pkt: Any, cls: int, ecn: int, data: bytes, p_drop: float,
                 p_any: float) -> tuple[int, bytes]:
    """must_drop() at dequeue: the coin with the probability in force now, and never while the
    backlog left behind (this packet already out, as dequeue_packet() accounts it) is below
    the link's minimum (2 MTU). Returns (action, payload): a Not-ECT packet that draws 'mark'
    is dropped; a SYN is never hit (the link's ECN-fallback exemption)."""
    if p_any <= 0.0 or link.queue.total_bytes < link.min_backlog:
        return ENQUEUE, data
    r = random()
    if r >= p_any:
        return ENQUEUE, data
    if is_tcp_syn(data):
        link.syn_exempt += 1
        return ENQUEUE, data
    if r < p_drop or ecn == 0:
        return DROP, data
    return MARK, link._mark(pkt, cls, ecn, data)


def stepped(qlen_after: int, sojourn_s: float, step_s: float | None, step_pkts: int | None) -> bool:
    """do_step_aqm(): in packets, more than step_pkts left in the packet's queue after it
    left; in time, a sojourn strictly above step_s (the kernel compares with '>')."""
    if step_pkts is not None:
        return qlen_after > step_pkts
    return step_s is not None and sojourn_s > step_s


def per_packet_rules_missing(policy: Any) -> str | None:
    """Why the ebpf datapath cannot run this policy's per-packet rules, or None.

    Its tc program runs before the qdisc and sees each packet once, at enqueue: it has the L
    class's backlog but no per-packet state to carry to dequeue, so a step in packets (the
    queue left behind at dequeue) and min_qlen_step (the queue found at enqueue, applied at
    dequeue) would silently become something else. The coin at dequeue it cannot do either;
    that one it replaces with the coin at enqueue, as `testbed policies` says."""
    prm = getattr(policy, "params", None)
    if getattr(prm, "step_thresh_pkts", None) is not None:
        return (f"policy {policy.name!r} has a step in packets (step_thresh_pkts); the ebpf datapath "
                f"steps on time only (use the nfqueue datapath)")
    if getattr(prm, "min_qlen_step", 0):
        return (f"policy {policy.name!r} sets min_qlen_step; the ebpf datapath cannot apply it "
                f"(use the nfqueue datapath)")
    return None
