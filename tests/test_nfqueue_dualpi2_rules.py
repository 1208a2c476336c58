"""The nfqueue link applies sch_dualpi2's per-packet rules when a decision asks for them: the
coin at dequeue (drop_dequeue) with the backlog left behind, the step in packets, the step's
strict '>' and min_qlen_step (net/sched/sch_dualpi2.c: must_drop(), do_step_aqm(),
skb_apply_step()). Real IPv4 packets, no NFQUEUE; which packets were marked is read from the
payloads the link handed back, not from its counters."""

from __future__ import annotations

from orchestrator.bottleneck import nfqueue_link as nl
from policies.base import ClassDecision, Decision

from test_nfqueue_link import Pkt, make_link, run_until, udp

ECT0, ECT1, CE = 2, 1, 3


def marked(pkts: list[Pkt]) -> list[int]:
    return [i for i, p in enumerate(pkts) if p.verdict == "accept" and p.out[1] & 3 == CE]


def send(link: nl.Link, n: int, tos: int) -> list[Pkt]:
    pkts = [Pkt(udp(tos=tos, size=986)) for _ in range(n)]  # 1000 bytes on the wire each
    for p in pkts:
        link.arrive(p, 0.0)
    return pkts


def test_step_in_packets_counts_what_is_left_in_the_l_queue():
    link = make_link(rate=8e6)
    link.apply(Decision(l4s=ClassDecision(step_threshold_pkts=2)))
    pkts = send(link, 6, ECT1)
    run_until(link, 1.0)
    # leaving with 5, 4, 3 packets behind: > 2; with 2, 1, 0: not
    assert marked(pkts) == [0, 1, 2] and link.step_marks == 3


def test_step_in_time_is_strictly_greater_and_min_qlen_step_is_taken_at_enqueue():
    link = make_link(rate=8e6)  # 1 ms per packet: sojourns 0, 1, 2, ... ms
    link.apply(Decision(l4s=ClassDecision(step_threshold_ms=1.0)))
    pkts = send(link, 6, ECT1)
    run_until(link, 1.0)
    assert marked(pkts) == [2, 3, 4, 5]  # sojourn 1 ms is not > 1 ms
    link = make_link(rate=8e6)
    link.apply(Decision(l4s=ClassDecision(step_threshold_ms=0.0, min_qlen_step=3)))
    pkts = send(link, 6, ECT1)
    run_until(link, 1.0)
    assert marked(pkts) == [3, 4, 5]  # only those that found >= 3 packets in L on arrival


def test_coin_at_dequeue_uses_the_probability_then_and_the_backlog_left_behind():
    link = make_link(rate=8e6)
    link.apply(Decision(classic=ClassDecision(p_mark=0.0, coin_at_dequeue=True)))
    pkts = send(link, 5, ECT0)
    link.apply(Decision(classic=ClassDecision(p_mark=1.0, coin_at_dequeue=True)))  # after arrival
    run_until(link, 1.0)
    # left behind: 4000, 3000, ... bytes; the coin is tossed only at >= 2 MTU (3028 bytes)
    assert marked(pkts) == [0]
    link = make_link(rate=8e6)  # the same at enqueue: backlog found 0, 1000, ... 4000 bytes
    link.apply(Decision(classic=ClassDecision(p_mark=1.0)))
    pkts = send(link, 5, ECT0)
    run_until(link, 1.0)
    assert marked(pkts) == [4]


def test_coin_at_dequeue_drops_not_ect_and_the_link_serves_the_next():
    link = make_link(rate=8e6)
    link.apply(Decision(classic=ClassDecision(p_mark=1.0, coin_at_dequeue=True)))
    pkts = send(link, 6, 0)
    run_until(link, 1.0)
    assert [p.verdict for p in pkts] == ["drop", "drop", "accept", "accept", "accept", "accept"]
