"""Single-queue PI2 (De Schepper et al., CoNEXT 2016)."""

import pytest

from policies.base import ClassState, ParamError, QueueState
from policies.pi2 import Pi2, Pi2Params


def qs(c_ms: float = 0.0, l_ms: float = 0.0) -> QueueState:
    return QueueState(t=0.0, dt=0.03, link_rate_bps=50e6,
                      classic=ClassState(head_sojourn_ms=c_ms), l4s=ClassState(head_sojourn_ms=l_ms))


def test_plain_pi_update_without_autotuning():
    pol = Pi2()  # alpha 0.3125, beta 3.125, target 20 ms
    pol.update(qs(c_ms=30))
    assert pol.prob == pytest.approx(0.3125 * 0.010 + 3.125 * 0.030)
    pol.update(qs(l_ms=30))  # one queue: the older head is the queue's delay, whatever its class
    assert pol.prob == pytest.approx(2 * 0.3125 * 0.010 + 3.125 * 0.030)


def test_ect1_gets_k_times_p_and_others_p_squared():
    pol = Pi2()
    for _ in range(5):
        d = pol.update(qs(c_ms=40))
        assert d.l4s.p_mark == pytest.approx(min(2 * pol.prob, 1.0))
        assert d.classic.p_mark == pytest.approx(pol.prob ** 2)
        assert d.l4s.p_drop == d.classic.p_drop == 0
    assert pol.queue_config().dualq is False


def test_scalable_probability_is_capped_at_one():
    pol = Pi2()
    for _ in range(100):
        d = pol.update(qs(c_ms=300))
    assert pol.prob == pytest.approx(0.5) and d.l4s.p_mark == 1.0
    assert d.classic.p_mark == pytest.approx(0.25)


def test_decays_when_the_queue_stays_empty():
    pol = Pi2()
    for _ in range(3):
        pol.update(qs(c_ms=40))
    pol.prob, pol.qdelay_old = 0.3, 0.0  # a p' left over from earlier congestion
    pol.update(qs())
    assert pol.prob == pytest.approx((0.3 - 0.3125 * 0.020) * 0.98)


def test_without_ecn_everyone_is_dropped_with_p_squared():
    pol = Pi2(Pi2Params(ecn=False))
    d = pol.update(qs(c_ms=40))
    assert d.l4s.p_drop == d.classic.p_drop == pytest.approx(pol.prob ** 2)
    assert pol.prob > 0
    assert d.l4s.p_mark == d.classic.p_mark == 0


def test_bad_values_name_the_key():
    with pytest.raises(ParamError, match="'k'"):
        Pi2Params.from_args({"k": "0"})
