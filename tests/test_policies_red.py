"""RED (Floyd & Jacobson 1993; gentle, Floyd 2000; ECN, RFC 3168)."""

import pytest

from policies.base import ClassState, ParamError, QueueState
from policies.red import Red, RedParams


def qs(pkts: int, arrivals: int = 10, dt: float = 0.016, nbytes: int | None = None) -> QueueState:
    c = ClassState(backlog_pkts=pkts, backlog_bytes=pkts * 1500 if nbytes is None else nbytes,
                   arrivals=arrivals)
    return QueueState(t=0.0, dt=dt, link_rate_bps=12e6, classic=c)


def test_probability_is_zero_below_min_th_and_rises_linearly_to_max_p():
    red = Red(RedParams(min_th=5, max_th=15, max_p=0.1))
    assert red.probability(0) == red.probability(4.99) == 0.0
    ramp = [red.probability(a) for a in (5, 7.5, 10, 12.5)]
    assert ramp == pytest.approx([0.0, 0.025, 0.05, 0.075])
    assert red.probability(14.999) == pytest.approx(0.1, abs=1e-4)


def test_gentle_ramp_to_one_at_twice_max_th_and_hard_jump_without():
    gentle, hard = Red(RedParams(min_th=5, max_th=15)), Red(RedParams(min_th=5, max_th=15, gentle=False))
    assert gentle.probability(22.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert gentle.probability(30) == 1.0
    assert hard.probability(15) == 1.0


def test_decision_follows_the_average_queue():
    red = Red(RedParams(w_q=1.0))  # avg = instantaneous queue
    assert red.update(qs(3)).classic.p_mark == 0
    d = red.update(qs(10))
    assert d.classic.p_mark == pytest.approx(0.05) and d.classic.p_drop == 0
    assert d.l4s == d.classic


def test_average_moves_by_one_ewma_step_per_arrival():
    red = Red()  # w_q = 0.002
    red.update(qs(10, arrivals=100))
    assert red.avg == pytest.approx(10 * (1 - 0.998 ** 100))
    avg = red.avg
    red.update(qs(0, arrivals=0, dt=0.016))  # idle: decay by m = dt / (avpkt transmission time)
    assert red.avg == pytest.approx(avg * 0.998 ** (0.016 * 12e6 / 8000))


def test_byte_mode_uses_bytes():
    red = Red(RedParams(byte_mode=True, min_th=3000, max_th=9000, w_q=1.0))
    assert red.update(qs(2, nbytes=6000)).classic.p_mark == pytest.approx(0.05)


def test_ecn_off_and_harddrop_drop_instead_of_marking():
    assert Red(RedParams(w_q=1.0, ecn=False)).update(qs(10)).classic.p_drop == pytest.approx(0.05)
    full = Red(RedParams(w_q=1.0, harddrop=True)).update(qs(40)).classic
    assert (full.p_drop, full.p_mark) == (1.0, 0.0)
    assert Red(RedParams(w_q=1.0)).update(qs(40)).classic.p_mark == 1.0


def test_bad_values_name_the_key():
    with pytest.raises(ParamError, match="max_th"):
        RedParams.from_args({"min_th": "20", "max_th": "10"})
    with pytest.raises(ParamError, match="max_p"):
        RedParams.from_args({"max_p": "2"})


def test_thresholds_in_time_scale_with_the_link_rate():
    """min_ms/max_ms (issue 14, item 5): 2 and 6 ms at 12 Mbit/s with 1000-byte packets are 3
    and 9 packets; at 120 Mbit/s 30 and 90. The same queue delay gives the same probability."""
    red = Red(RedParams(min_ms=2, max_ms=6, w_q=1.0))
    assert red.thresholds(12e6) == pytest.approx((3.0, 9.0))
    assert red.thresholds(120e6) == pytest.approx((30.0, 90.0))
    slow = red.update(qs(6)).classic.p_mark  # 4 ms of queue at 12 Mbit/s: 0.1 * (6-3)/(9-3)
    fast_state = QueueState(t=0.0, dt=0.016, link_rate_bps=120e6,
                            classic=ClassState(backlog_pkts=60, backlog_bytes=90000, arrivals=10))
    fast = Red(RedParams(min_ms=2, max_ms=6, w_q=1.0)).update(fast_state).classic.p_mark
    assert slow == pytest.approx(0.05) and fast == pytest.approx(0.05)


def test_thresholds_in_time_in_byte_mode_and_packets_unchanged():
    assert Red(RedParams(min_ms=2, max_ms=6, byte_mode=True)).thresholds(12e6) == pytest.approx((3000, 9000))
    packets = Red(RedParams(min_th=5, max_th=15))
    assert packets.thresholds(12e6) == packets.thresholds(1e9) == (5, 15)
    packets.update(qs(0, arrivals=0))
    assert (packets.min_th, packets.max_th) == (5, 15)


def test_thresholds_in_time_come_in_pairs():
    with pytest.raises(ParamError, match="max_ms"):
        RedParams(min_ms=2)
    with pytest.raises(ParamError, match="max_ms"):
        RedParams(min_ms=6, max_ms=2)
