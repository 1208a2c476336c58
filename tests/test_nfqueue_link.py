"""The nfqueue link's pure pieces, without NFQUEUE: classifier, ECN rewrite, DualQ scheduler,
rate and sojourn accounting, the policy's decision per packet, the packet log.

Packets are real IPv4 packets built with scapy; checksums are checked with scapy's own
checksum code, not the module's."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import checksum

import policies
from orchestrator.bottleneck import nfqueue_link as nl
from orchestrator.bottleneck.nfqueue_daemon import LinkDaemon
from orchestrator.bottleneck.packetlog import PacketLog
from policies.base import Action, ClassDecision, Decision, QueueConfig
from policies.telemetry import read


def udp(tos: int = 0, size: int = 1500, sport: int = 1234, dport: int = 5201) -> bytes:
    pkt = IP(src="10.0.1.1", dst="10.0.2.2", tos=tos) / UDP(sport=sport, dport=dport)
    return bytes(pkt / (b"x" * (size - len(pkt))))


def tcp(flags: str, tos: int = 0) -> bytes:
    return bytes(IP(src="10.0.1.1", dst="10.0.2.2", tos=tos) / TCP(sport=40000, dport=5201, flags=flags))


class Pkt:
    """Stands in for netfilterqueue.Packet: records the verdict and the payload given."""

    def __init__(self, data: bytes) -> None:
        self.data, self.verdict, self.given = data, None, None

    def get_payload(self) -> bytes:
        return self.data

    def set_payload(self, payload: bytes) -> None:
        self.given = payload

    def accept(self) -> None:
        assert self.verdict is None
        self.verdict = "accept"

    def drop(self) -> None:
        assert self.verdict is None
        self.verdict = "drop"

    @property
    def out(self) -> bytes:
        return self.given if self.given is not None else self.data


def header_ok(data: bytes) -> bool:
    ihl = (data[0] & 0x0F) * 4
    return checksum(data[:ihl]) == 0  # a correct header sums to 0xFFFF, i.e. checksum 0


# ---------------------------------------------------------------- header bits


def test_classifier_puts_ect1_and_ce_in_l():
    assert [nl.classify(tos) for tos in (0, 1, 2, 3)] == [nl.C, nl.L, nl.C, nl.L]
    assert nl.classify(0xB8 | 1) == nl.L and nl.classify(0xB8 | 2) == nl.C  # DSCP bits ignored


@pytest.mark.parametrize("tos", [1, 2, 0x28 | 1, 0xFE])
def test_set_ce_fixes_checksum(tos):
    rng = random.Random(tos)
    for _ in range(300):
        ident = rng.randrange(65536)
        pkt = IP(src=f"10.{rng.randrange(256)}.0.1", dst="10.0.2.2", tos=tos, id=ident,
                 ttl=rng.randrange(1, 256)) / UDP() / (b"y" * rng.randrange(100))
        data = bytes(pkt)
        assert header_ok(data)
        out = nl.set_ce(data)
        assert out[1] & 3 == 3 and out[1] >> 2 == data[1] >> 2  # DSCP untouched
        assert len(out) == len(data) and out[12:] == data[12:]
        assert header_ok(out), f"bad checksum after CE for {data[:20].hex()}"
        assert int.from_bytes(out[10:12], "big") == nl.ipv4_checksum(out[:20])


def test_set_ce_keeps_options_and_edge_checksums():
    data = bytes(IP(dst="10.0.2.2", tos=2, options=b"\x01\x01\x01\x00") / UDP())
    assert (data[0] & 0x0F) == 6 and header_ok(nl.set_ce(data))
    # headers whose checksum is 0x0000 or 0xFFFF before or after exercise the end-around carry
    template = bytearray(bytes(IP(dst="10.0.2.2", tos=1) / UDP()))
    seen = set()
    for ident in range(65536):
        template[4:6], template[10:12] = ident.to_bytes(2, "big"), b"\0\0"
        c = checksum(bytes(template[:20]))
        if c in (0x0000, 0x0001, 0x0002, 0xFFFE, 0xFFFF) and c not in seen:
            seen.add(c)
            template[10:12] = c.to_bytes(2, "big")
            assert header_ok(bytes(template)) and header_ok(nl.set_ce(bytes(template)))
    assert seen


def test_syn_detection():
    assert nl.is_tcp_syn(tcp("S")) and nl.is_tcp_syn(tcp("SA"))
    assert not nl.is_tcp_syn(tcp("A")) and not nl.is_tcp_syn(udp())


# ---------------------------------------------------------------- the scheduler


def fill(q: nl.DualQueue, cls: int, n: int, t: float = 0.0, size: int = 1514) -> None:
    for _ in range(n):
        q.push((t, size, cls, 1 if cls == nl.L else 0, 0, None, b""))


def test_dualq_serves_l_first_and_protects_c():
    q = nl.DualQueue(dualq=True, c_protection=0.10)
    fill(q, nl.C, 2000)
    fill(q, nl.L, 2000)
    order = [q.pop(0.0)[0][2] for _ in range(1000)]
    assert order[:8] == [nl.L] * 8  # the credit starts at MTU * (wc - wl): L first
    c_share = order.count(nl.C) / len(order)
    assert abs(c_share - 0.10) < 0.005, c_share
    c_turns = [i for i, c in enumerate(order) if c == nl.C]
    assert max(np.diff(c_turns)) <= 10  # C never waits more than 9 L packets


@pytest.mark.parametrize("share", [0.05, 0.25, 0.5])
def test_dualq_c_protection_share(share):
    q = nl.DualQueue(dualq=True, c_protection=share)
    fill(q, nl.C, 5000, size=1514)
    fill(q, nl.L, 5000, size=600)  # the share is in bytes, whatever the packet sizes
    got = {nl.L: 0, nl.C: 0}
    for _ in range(3000):
        (entry, _) = q.pop(0.0)
        got[entry[2]] += entry[1]
    assert got[nl.C] / (got[nl.L] + got[nl.C]) == pytest.approx(share, abs=0.01)


def test_dualq_lone_queue_gets_everything_and_credit_resets():
    q = nl.DualQueue(dualq=True)
    fill(q, nl.C, 5)
    assert [q.pop(0.0)[0][2] for _ in range(5)] == [nl.C] * 5
    assert q.pop(0.0) is None and q.credit == q.credit_init and len(q) == 0


def test_dualq_only_packets_arrived_by_the_start_compete():
    q = nl.DualQueue(dualq=True)
    q.push((1.0, 1514, nl.C, 0, 0, "c", b""))
    q.push((2.0, 1514, nl.L, 1, 0, "l", b""))
    entry, start = q.pop(free_at=1.5)  # the link was free at 1.5: only C was there
    assert entry[5] == "c" and start == 1.5
    entry, start = q.pop(free_at=1.6)
    assert entry[5] == "l" and start == 2.0


def test_fifo_mode_keeps_arrival_order_across_classes():
    q = nl.DualQueue(dualq=False)
    for i in range(10):
        q.push((float(i), 100, i % 2, 0, 0, i, b""))
    assert [q.pop(0.0)[0][5] for _ in range(10)] == list(range(10))
    assert q.pkts == [0, 0] and q.bytes == [0, 0]


# ---------------------------------------------------------------- the link


def make_link(rate=8e6, dualq=True, limit=1000, log=None, **kw):
    return nl.Link(rate, QueueConfig(dualq=dualq), limit, math.inf, log=log, **kw)


def run_until(link: nl.Link, t_end: float) -> float:
    """Drive serve() as the event loop does; return the time the link went idle."""
    now = 0.0
    while now <= t_end:
        wake = link.serve(now)
        if wake is None:
            return now
        now = wake
    return now


def test_link_releases_at_the_link_rate():
    link = make_link(rate=8e6)  # 1 byte per us
    pkts = [Pkt(udp(size=986)) for _ in range(10)]  # 1000 bytes on the wire
    for p in pkts:
        link.arrive(p, 0.0)
    released = []
    now = 0.0
    while (wake := link.serve(now)) is not None:
        released.append((wake, sum(p.verdict == "accept" for p in pkts)))
        now = wake
    assert [round(t, 9) for t, _ in released] == [round(1e-3 * k, 9) for k in range(1, 11)]
    assert all(p.verdict == "accept" for p in pkts)


def test_catching_up_never_starts_beyond_what_was_read():
    """After a stall the process reads C1 (t=1.0), C2 (1.01) and L (1.05) at now=5. Serving
    from the callback with each packet's arrival as the horizon, L must still go before C2
    when the link frees up at 1.1, as it would have on the ideal link."""
    link = make_link(rate=8e4)  # 0.1 s per 1000-byte packet
    c1, c2, lp = Pkt(udp(size=986)), Pkt(udp(size=986)), Pkt(udp(tos=1, size=986))
    for pkt, t in ((c1, 1.0), (c2, 1.01), (lp, 1.05)):
        link.arrive(pkt, t)
        link.serve(5.0, t)
    state = link.state(5.0)
    assert state.l4s.backlog_pkts == 1 and state.classic.backlog_pkts == 1  # nothing committed
    link.serve(5.0)
    st = link.state(5.0)
    assert st.l4s.sojourn_ms == pytest.approx(50.0)  # started at 1.1, not after C2 at 1.2
    assert st.classic.sojourn_max_ms == pytest.approx(1.2e3 - 1.01e3)


def test_sojourn_accounting_and_state():
    link = make_link(rate=8e6)
    for i in range(5):  # C: 1000-byte packets, one per 0.5 ms against a 1 ms service time
        link.arrive(Pkt(udp(size=986)), i * 0.5e-3)
        link.serve(i * 0.5e-3)
    run_until(link, 0.01)
    st = link.state(0.01)
    c = st.classic
    # starts at 0, 1, 2, 3, 4 ms for arrivals at 0, .5, 1, 1.5, 2 ms -> sojourns 0, .5, 1, 1.5, 2
    assert c.sojourn_ms == pytest.approx(1.0) and c.sojourn_max_ms == pytest.approx(2.0)
    assert c.arrivals == 5 and c.backlog_pkts == 0 and st.l4s.arrivals == 0
    assert c.departure_bps == pytest.approx(5000 * 8 / 0.01)
    assert link.state(0.02).classic.arrivals == 0  # a new interval


def test_head_sojourn_is_the_oldest_waiting_packet():
    link = make_link(rate=8e3)  # slow: 1 s per 1000 bytes
    link.arrive(Pkt(udp(tos=1, size=986)), 0.0)
    link.serve(0.0)
    link.arrive(Pkt(udp(tos=1, size=986)), 0.1)
    link.arrive(Pkt(udp(tos=0, size=986)), 0.2)
    st = link.state(0.5)
    assert st.l4s.head_sojourn_ms == pytest.approx(400) and st.l4s.backlog_pkts == 1
    assert st.classic.head_sojourn_ms == pytest.approx(300) and st.classic.backlog_bytes == 1000


def test_decision_marks_ect_drops_not_ect_and_spares_syns():
    link = make_link(min_backlog_bytes=0)
    link.apply(Decision(l4s=ClassDecision(p_mark=1.0), classic=ClassDecision(p_mark=1.0)))
    ect1, ect0, notect, syn = (Pkt(udp(tos=1)), Pkt(udp(tos=2)), Pkt(udp(tos=0)),
                               Pkt(tcp("S", tos=0)))
    for p in (ect1, ect0, notect, syn):
        link.arrive(p, 0.0)
    run_until(link, 1.0)
    assert notect.verdict == "drop"
    for p in (ect1, ect0):
        assert p.verdict == "accept" and p.out[1] & 3 == 3 and header_ok(p.out)
    assert syn.verdict == "accept" and syn.given is None and link.syn_exempt == 1


def test_decision_drop_probability_is_honoured():
    link = make_link(limit=10**6, min_backlog_bytes=0)
    link.apply(Decision(classic=ClassDecision(p_drop=0.3)))
    data = udp()
    pkts = [Pkt(data) for _ in range(20000)]
    for p in pkts:
        link.arrive(p, 0.0)
    frac = sum(p.verdict == "drop" for p in pkts) / len(pkts)
    assert frac == pytest.approx(0.3, abs=0.02)


def test_no_probabilistic_action_below_two_mtu():
    link = make_link()  # default: 2 MTU
    link.apply(Decision(classic=ClassDecision(p_drop=1.0)))
    pkts = [Pkt(udp()) for _ in range(4)]
    for p in pkts:
        link.arrive(p, 0.0)
    assert [p.verdict for p in pkts] == [None, None, "drop", "drop"]


def test_step_marks_l_packets_above_threshold():
    link = make_link(rate=8e6)  # 1 ms per 1000-byte packet
    link.apply(Decision(l4s=ClassDecision(step_threshold_ms=2.5)))
    pkts = [Pkt(udp(tos=1, size=986)) for _ in range(6)]
    for p in pkts:
        link.arrive(p, 0.0)
    run_until(link, 1.0)
    # sojourns 0..5 ms: the packets that waited >= 2.5 ms are CE, with a valid checksum
    assert [p.out[1] & 3 for p in pkts] == [1, 1, 1, 3, 3, 3]
    assert all(header_ok(p.out) for p in pkts) and link.step_marks == 3


def test_tail_drop_at_the_limit():
    link = make_link(limit=5)
    pkts = [Pkt(udp()) for _ in range(8)]
    for p in pkts:
        link.arrive(p, 0.0)
    assert [p.verdict for p in pkts] == [None] * 5 + ["drop"] * 3 and link.overflow == 3


def test_per_packet_hook_drops_at_dequeue():
    codel = policies.make("codel", {"target_ms": 1, "interval_ms": 5})
    link = nl.Link(8e6, codel.queue_config(), 10**6, math.inf, policy=codel)
    pkts = [Pkt(udp(size=986)) for _ in range(60)]  # a 60 ms standing queue
    for p in pkts:
        link.arrive(p, 0.0)
    run_until(link, 1.0)
    drops = [i for i, p in enumerate(pkts) if p.verdict == "drop"]
    assert drops and drops[0] >= 5  # nothing before sojourn > target for an interval
    assert all(p.verdict in ("accept", "drop") for p in pkts)
    assert link.counters()["drops"]["classic"] == len(drops)


def test_packet_log_rows(tmp_path):
    log = PacketLog(tmp_path / "packets", epoch_offset=1000.0, meta={"datapath": "nfqueue"})
    link = make_link(rate=8e6, log=log, limit=3, min_backlog_bytes=0)
    link.apply(Decision(l4s=ClassDecision(p_mark=1.0)))
    for data in (udp(tos=1, size=986, sport=7), udp(tos=0, size=986), udp(), udp(), udp()):
        link.arrive(Pkt(data), 0.0)
    run_until(link, 1.0)
    log.close()
    df = read(tmp_path / "packets").sort_values("t_departure")
    assert len(df) == 5
    sent = df[df.action != Action.DROP]
    assert list(sent.cls) == [0, 1, 1] and list(sent.ecn_in) == [1, 0, 0]
    assert list(sent.action) == [Action.MARK, Action.ENQUEUE, Action.ENQUEUE]
    assert sent.sojourn_ms.tolist() == pytest.approx([0.0, 1.0, 2.0])
    assert (df.t_arrival == 1000.0).all() and list(sent["size"]) == [1000, 1000, 1514]
    assert sent.sport.iloc[0] == 7 and df.dst.iloc[0] == int.from_bytes(bytes([10, 0, 2, 2]), "big")
    drops = df[df.action == Action.DROP]
    assert len(drops) == 2 and drops.t_departure.isna().all() and drops.sojourn_ms.isna().all()
    assert df.dtypes["cls"] == np.uint8 and df.dtypes["size"] == np.uint16
    assert df.dtypes["sojourn_ms"] == np.float32 and df.dtypes["src"] == np.uint32


def test_packet_log_sampling(tmp_path):
    log = PacketLog(tmp_path / "p", sample_rate=0.25)
    data = udp()
    for i in range(40000):
        log.add(float(i), float(i), 0, data)
    log.close()
    assert len(read(tmp_path / "p")) == pytest.approx(10000, rel=0.05)
    assert nl.sample_rate({"rate_bps": 50e6}) == 1.0
    assert nl.sample_rate({"rate_bps": 10e9}) == pytest.approx(20000 / (10e9 / 8 / 1514))


def test_link_process_rebuilds_the_policy_it_was_given(tmp_path):
    """The datapath passes the policy by name and parameters (and Explore's noise settings);
    the link process builds the same policy from that."""
    from orchestrator.bottleneck.nfqueue import NfqueueDatapath
    from orchestrator.testbed.base import Bottleneck, Testbed
    from policies.explore import Explore

    bn = Bottleneck(router="r1", egress="e-rx", ingress=["e-s1"], rate_bps=50e6, forward_delay_s=0.0,
                    reverse_delay_s=0.02, buffer_pkts=125, buffer_bytes=187500, delay_mode="nfqueue")
    dp = NfqueueDatapath(Testbed("t", {}, {}, bn))
    dp.run_dir, dp.seed = tmp_path, 7
    policy = Explore(policies.make("dualpi2", {"target_ms": 20, "c_protection": 0.2}), epsilon=0.5,
                     spread=3.0, hold=2, seed=7, floor=2e-5)
    config = json.loads(json.dumps(dp.config(policy)))
    assert config["kernel_timestamps"] is True and config["seed"] == 7
    proc = LinkDaemon(config)
    try:
        built = proc.policy
        assert isinstance(built, Explore)
        assert (built.epsilon, built.spread, built.hold, built.floor) == (0.5, 3.0, 2, 2e-5)
        assert built.inner.params == policy.inner.params
        assert proc.limits["c_protection"] == 0.2 and proc.limits["limit_pkts"] == 10000
    finally:
        proc.control.close()
        proc.log.close()
