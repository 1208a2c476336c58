"""PIE against RFC 8033."""

import pytest

from policies.base import ClassState, ParamError, QueueState
from policies.pie import Pie, PieParams


def qs(ms: float) -> QueueState:
    return QueueState(t=0.0, dt=0.015, link_rate_bps=50e6, classic=ClassState(head_sojourn_ms=ms))


def test_first_increment_is_scaled_down_by_2048():
    pol = Pie()
    pol.update(qs(30))
    assert pol.drop_prob == pytest.approx((0.125 * 0.015 + 1.25 * 0.030) / 2048)


def test_probability_rises_while_delay_stays_above_target():
    pol = Pie()
    probs = []
    for _ in range(100):
        pol.update(qs(30))
        probs.append(pol.drop_prob)
    assert all(b > a for a, b in zip(probs, probs[1:], strict=False))
    assert probs[-1] > 0.01  # the auto-tuning let it climb through the small-p decades


def test_probability_decays_when_the_queue_is_empty():
    pol = Pie()
    for _ in range(200):
        pol.update(qs(40))
    assert pol.drop_prob > 0.05
    pol.update(qs(0))  # qdelay_old is still 40 ms: no decay yet, only the PI term
    start = pol.drop_prob
    for _ in range(20):
        before = pol.drop_prob
        pol.update(qs(0))
        assert 0 <= pol.drop_prob <= 0.98 * before
    assert pol.drop_prob < 0.98 ** 20 * start


def test_burst_allowance_lets_a_150ms_burst_through():
    pol = Pie()
    pol.update(qs(0))
    decisions = [pol.update(qs(100)) for _ in range(12)]  # 15 ms per update
    assert pol.drop_prob > 0
    # the allowance lasts max_burst = 150 ms = 10 updates, then early drops begin
    assert all(d.classic.p_drop == d.classic.p_mark == 0 for d in decisions[:9])
    assert decisions[9].classic.p_mark > 0 or decisions[9].classic.p_drop > 0
    assert decisions[11].l4s == decisions[11].classic  # one queue, one probability


def test_burst_allowance_refills_once_calm():
    pol = Pie()
    for _ in range(20):
        pol.update(qs(100))
    assert pol.burst_allowance_ms == 0
    for _ in range(400):
        pol.update(qs(0))
    assert pol.drop_prob == 0 and pol.burst_allowance_ms == 150


def test_no_early_drop_while_delay_is_below_half_target_and_p_small():
    pol = Pie(PieParams(max_burst_ms=0))
    for _ in range(60):
        pol.update(qs(40))
    assert 0 < pol.drop_prob < 0.2
    d = pol.update(qs(5))  # below target/2 = 7.5 ms
    assert pol.drop_prob > 0 and d.classic.p_mark == d.classic.p_drop == 0


def test_ecn_marks_up_to_10_percent_then_drops():
    pol = Pie(PieParams(max_burst_ms=0))
    seen = set()
    for _ in range(300):
        d = pol.update(qs(60)).classic
        if pol.drop_prob <= 0.1:
            assert d.p_drop == 0 and d.p_mark == pytest.approx(pol.drop_prob)
            seen.add("mark")
        else:
            assert d.p_mark == 0 and d.p_drop == pytest.approx(pol.drop_prob)
            seen.add("drop")
    assert seen == {"mark", "drop"}
    no_ecn = Pie(PieParams(max_burst_ms=0, ecn=False))
    for _ in range(100):
        d = no_ecn.update(qs(60)).classic
    assert d.p_mark == 0 and d.p_drop > 0


def test_cap_drop_adjustment_limits_steps_to_2_percent_above_10_percent():
    pol = Pie()
    for _ in range(2000):  # bounded: a controller that never rises fails, not hangs
        if pol.drop_prob >= 0.1:
            break
        pol.update(qs(60))
    assert pol.drop_prob >= 0.1
    before = pol.drop_prob
    pol.update(qs(500))
    assert pol.drop_prob - before == pytest.approx(0.02)
    uncapped = Pie(PieParams(cap_drop=False))
    uncapped.drop_prob, uncapped.qdelay_old = before, 0.060
    uncapped.update(qs(500))
    assert uncapped.drop_prob - before > 0.5


def test_queue_is_single_and_updates_every_15ms():
    c = Pie().queue_config()
    assert (c.dualq, c.tupdate_s) == (False, 0.015)


def test_bad_values_name_the_key():
    with pytest.raises(ParamError, match="mark_ecnth"):
        PieParams.from_args({"mark_ecnth": "1.5"})
    with pytest.raises(ParamError, match="target_ms"):
        PieParams.from_args({"target_ms": "fast"})


# RFC 8033 section 4.2, calculate_drop_prob(): the increment alpha*(qdelay - ref) +
# beta*(qdelay - qdelay_old) is divided by 2048, 512, 128, 32, 8 or 2 while drop_prob is below
# 1e-6, 1e-5, 1e-4, 1e-3, 1e-2 or 1e-1 (and not at all above).
@pytest.mark.parametrize("drop_prob,divisor", [
    (0.0, 2048), (5e-7, 2048), (1e-6, 512), (5e-6, 512), (5e-5, 128), (1e-4, 32), (5e-4, 32),
    (5e-3, 8), (0.01, 2), (0.05, 2), (0.1, 1), (0.5, 1)])
def test_autotuning_divides_the_increment_by_the_rfc_band(drop_prob, divisor):
    pol = Pie()
    pol.drop_prob, pol.qdelay_old = drop_prob, 0.031  # qdelay stays 31 ms: no beta term
    pol.update(qs(31))
    assert pol.drop_prob - drop_prob == pytest.approx(0.125 * 0.016 / divisor, rel=1e-9)


def test_cap_drop_limits_an_increment_of_just_over_2_percent():
    """RFC 8033: `if (drop_prob >= 0.1 && p > 0.02) p = 0.02`, also for a p of 0.025."""
    pol = Pie()
    pol.drop_prob, pol.qdelay_old = 0.15, 0.215
    pol.update(qs(215))  # alpha * 0.2 s = 0.025
    assert pol.drop_prob == pytest.approx(0.17)
    below = Pie()
    below.drop_prob, below.qdelay_old = 0.09, 0.215  # below 10%: not capped
    below.update(qs(215))
    assert below.drop_prob == pytest.approx(0.09 + 0.025 / 2)


@pytest.mark.parametrize("ms,refills", [(6.0, True), (10.0, False)])
def test_burst_allowance_refills_only_below_half_the_target(ms, refills):
    """RFC 8033: burst_allowance = MAX_BURST when drop_prob == 0 and both qdelay and
    qdelay_old are below QDELAY_REF/2 (7.5 ms); otherwise it keeps running down."""
    pol = Pie()
    pol.burst_allowance_ms, pol.qdelay_old = 30.0, ms / 1e3
    pol.update(qs(ms))
    assert pol.drop_prob == 0
    assert pol.burst_allowance_ms == (150.0 if refills else 15.0)


def test_no_early_drop_safeguard_stops_at_20_percent():
    """RFC 8033 drop_early(): no drop while qdelay_old < QDELAY_REF/2 and drop_prob < 20%; at
    25% the probability applies even on a short queue."""
    pol = Pie(PieParams(max_burst_ms=0))
    pol.drop_prob = 0.25
    d = pol.update(qs(2)).classic
    assert d.p_drop == pytest.approx(pol.drop_prob) and pol.drop_prob > 0.2


def test_zero_target_or_interval_is_refused_and_a_one_packet_limit_accepted():
    for key in ("target_ms", "tupdate_ms"):
        with pytest.raises(ParamError, match=key):
            PieParams.from_args({key: "0"})
    assert PieParams.from_args({"limit": "1"}).limit == 1
