"""DualPI2 against RFC 9332, Linux sch_dualpi2 and tc-dualpi2(8)."""

import pytest

from policies.base import Action, ClassState, ParamError, QueueState
from policies.dualpi2 import DualPi2, DualPi2Params, rtt_derived


def F(**kw) -> DualPi2:
    """The float form of the controller (arithmetic=float): the RFC's equations in doubles."""
    return DualPi2(DualPi2Params(arithmetic="float", **kw))


def qs(c_ms: float = 0.0, l_ms: float = 0.0) -> QueueState:
    return QueueState(t=0.0, dt=0.016, link_rate_bps=50e6,
                      classic=ClassState(head_sojourn_ms=c_ms), l4s=ClassState(head_sojourn_ms=l_ms))


def test_pi_controller_golden_values():
    pol = F()  # alpha 0.16 Hz, beta 3.2 Hz, target 15 ms
    pol.update(qs(c_ms=20))
    assert pol.prob == pytest.approx(0.16 * 0.005 + 3.2 * 0.020)  # 0.0648
    d = pol.update(qs(c_ms=20))
    assert pol.prob == pytest.approx(0.0648 + 0.16 * 0.005)  # 0.0656: only the integral part
    assert d.classic.p_mark == pytest.approx(0.0656 ** 2) and d.classic.p_drop == 0
    assert d.l4s.p_mark == pytest.approx(2 * 0.0656) and d.l4s.p_drop == 0


def test_coupling_before_the_step_is_pc_squared_and_pl_linear():
    pol = F(coupling_factor=3.0)
    for _ in range(40):  # p' grows from 0.08 to about 0.14: below 1/k, so no overload
        d = pol.update(qs(c_ms=25))
        p = pol.prob
        assert d.classic.p_mark == pytest.approx(p * p) and d.classic.p_drop == 0
        assert d.l4s.p_mark == pytest.approx(min(3 * p, 1.0)) and d.l4s.p_drop == 0
        assert d.l4s.step_threshold_ms == 1.0 and d.classic.step_threshold_ms is None
    assert pol.prob > 0.1


def test_probability_falls_back_to_zero_below_target():
    pol = F()
    for _ in range(5):
        pol.update(qs(c_ms=40))
    assert pol.prob > 0.1
    for _ in range(200):
        pol.update(qs(c_ms=2))
    assert pol.prob == 0.0


def test_step_marks_l4s_packets_whose_sojourn_exceeds_1ms():
    d = F().update(qs()).l4s  # empty queues: p' stays 0, only the step can mark
    assert d.p_mark == 0 and d.step_threshold_ms == 1.0
    assert d.action(u=0.999, sojourn_ms=1.2) is Action.MARK
    assert d.action(u=0.999, sojourn_ms=0.8) is Action.ENQUEUE
    assert d.action(u=0.999, sojourn_ms=1.2, ecn_capable=False) is Action.DROP


def test_qdelay_max_follows_linux_and_classic_follows_rfc_a1():
    linux, rfc = F(), F(qdelay="classic")
    linux.update(qs(c_ms=0, l_ms=30))
    rfc.update(qs(c_ms=0, l_ms=30))
    assert linux.prob == pytest.approx(0.16 * 0.015 + 3.2 * 0.030)
    assert rfc.prob == 0.0


def test_overload_drops_in_both_queues_with_drop_overload():
    pol = F()
    for _ in range(1000):  # bounded: a controller that never saturates fails, not hangs
        d = pol.update(qs(c_ms=200))
        if pol.params.coupling_factor * pol.prob > 1:
            break
    assert pol.params.coupling_factor * pol.prob > 1
    p_c = pol.prob ** 2
    assert d.classic.p_drop == pytest.approx(p_c) and d.classic.p_mark == 0
    assert d.l4s.p_drop == pytest.approx(p_c) and d.l4s.p_mark == pytest.approx(1 - p_c)


def test_without_drop_overload_p_is_capped_at_1_over_k_and_nothing_drops():
    pol = F(drop_overload=False)
    for _ in range(50):
        d = pol.update(qs(c_ms=200))
    assert pol.prob == pytest.approx(0.5)
    assert d.l4s.p_mark == pytest.approx(1.0) and d.l4s.p_drop == 0
    assert d.classic.p_mark == pytest.approx(0.25) and d.classic.p_drop == 0


def test_queue_config_matches_linux_defaults():
    c = DualPi2().queue_config()
    assert (c.dualq, c.c_protection, c.limit_pkts, c.tupdate_s) == (True, 0.10, 10000, 0.016)


# tc-dualpi2(8): "If either max_rtt or typical_rtt is not specified, the missing value will be
# computed from ... max_rtt = typical_rtt * 6", target = typical_rtt; alpha 0.16 Hz "provides
# stable control for RTTs up to 100ms with tupdate of 16ms". RFC 9332 A.1: beta = 0.3 / RTT_max,
# i.e. 3.0 Hz at 100 ms; the 3.2 Hz default of Linux (819/256) is not this formula's value.
def test_rtt_derivation_reproduces_tc_dualpi2():
    target, tupdate, alpha, beta = rtt_derived(16, 100)
    assert (target, tupdate) == (16.0, 16.0)
    assert alpha == pytest.approx(0.16, rel=1e-6) and beta == pytest.approx(3.0, rel=1e-6)
    target, tupdate, alpha, beta = rtt_derived(15, None)  # max_rtt = 90 ms
    assert (target, tupdate) == (15.0, 15.0)
    assert alpha == pytest.approx(0.1 * 0.015 / 0.090 ** 2, rel=1e-6)
    assert beta == pytest.approx(0.3 / 0.090, rel=1e-6)
    target, tupdate, alpha, beta = rtt_derived(None, 100)  # typical = 100 ms / 6, in whole us
    assert (target, tupdate) == (16.666, 16.666)
    target, tupdate, _, _ = rtt_derived(40, 60)  # tupdate = max_rtt / 3, truncated to us
    assert (target, tupdate) == (40.0, 20.0)


def test_rtt_params_override_target_and_gains():
    p = DualPi2Params(target_ms=5, alpha=9, typical_rtt_ms=20, max_rtt_ms=120)
    assert (p.target_ms, p.tupdate_ms) == (20.0, 20.0)
    assert p.alpha == pytest.approx(0.1 * 0.020 / 0.120 ** 2, rel=1e-6)


def test_bad_rtt_values_name_the_key():
    with pytest.raises(ParamError, match="typical_rtt_ms"):
        DualPi2Params.from_args({"typical_rtt_ms": "50", "max_rtt_ms": "20"})
    with pytest.raises(ParamError, match="max_rtt_ms"):
        DualPi2Params.from_args({"max_rtt_ms": "1e9"})  # alpha rounds down to 0
    with pytest.raises(ParamError, match="qdelay"):
        DualPi2Params.from_args({"qdelay": "min"})
