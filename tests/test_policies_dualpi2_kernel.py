"""DualPI2's kernel arithmetic against Linux sch_dualpi2 and tc-dualpi2, in the kernel's terms.

The reference values are computed here, in the test, from the C source's own expressions
(net/sched/sch_dualpi2.c: dualpi2_scale_alpha_beta(), dualpi2_unscale_alpha_beta(),
calculate_probability(), dualpi2_roll(); iproute2 tc/q_dualpi2.c: parse_alpha_beta(),
get_scaled_alpha_beta()), not from the module under test. FACTS.md records what tc prints for
the defaults: alpha 0.156250 beta 3.195312.
"""

from __future__ import annotations

import struct

import pytest

from policies.base import ClassState, ParamError, QueueState
from policies.dualpi2 import DualPi2, DualPi2Params

U32_MAX = 4294967295  # MAX_PROB
NSEC_PER_SEC = 10**9


def c_float(x: float) -> float:
    """A C float (what strtof gives), widened."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def scale(v: int) -> int:  # (u64)v * MAX_PROB >> (8 - 6), do_div by NSEC_PER_SEC
    return (v * U32_MAX >> 2) // NSEC_PER_SEC


def unscale(v: int) -> int:  # (u64)v * NSEC_PER_SEC << 2, do_div by MAX_PROB
    return (v * NSEC_PER_SEC << 2) // U32_MAX


def qs(c_ms: float = 0.0, l_ms: float = 0.0) -> QueueState:
    return QueueState(t=0.0, dt=0.016, link_rate_bps=50e6,
                      classic=ClassState(head_sojourn_ms=c_ms), l4s=ClassState(head_sojourn_ms=l_ms))


def test_default_gains_are_what_tc_prints():
    g = DualPi2().effective_gains()
    assert (g["tc_alpha"], g["tc_beta"]) == ("0.156250", "3.195312")  # FACTS.md, `tc qdisc show`
    # the kernel's defaults 41 and 819 (1/256 Hz), scaled to 44 and 879 per 64 ns
    assert (g["alpha256"], g["beta256"]) == (41, 819)
    assert (g["alpha_int"], g["beta_int"]) == (scale(41), scale(819)) == (44, 879)
    assert "%f" % (unscale(44) / 256) == "0.156250" and "%f" % (unscale(879) / 256) == "3.195312"
    # what the controller applies per second of delay: alpha_int / 64 per ns, in units of 2^32-1
    assert g["alpha_hz"] == pytest.approx(44 / 64 * 1e9 / U32_MAX, rel=1e-12)
    assert g["beta_hz"] == pytest.approx(879 / 64 * 1e9 / U32_MAX, rel=1e-12)


def test_other_gains_go_through_tcs_float_conversion():
    p = DualPi2Params(alpha=0.2, beta=5.0)
    assert p.alpha256 == int(c_float(0.2) * 256) == 51 and p.beta256 == 1280
    g = DualPi2(p).effective_gains()
    assert g["alpha_int"] == scale(51) and g["beta_int"] == scale(1280)
    # strtof rounds 2.0078124 up to 2.0078125 = 514/256; a double would give 513
    assert DualPi2Params(beta=2.0078124).beta256 == int(c_float(2.0078124) * 256) == 514
    # derived from max_rtt as tc does, then double * 256 truncated
    p = DualPi2Params(max_rtt_ms=200)
    assert p.alpha256 == int(p.alpha * 256) and p.beta256 == int(p.beta * 256)
    with pytest.raises(ParamError, match="alpha"):
        DualPi2Params(alpha=0.003)  # below 1/256: tc would send 0, the kernel refuses it
    with pytest.raises(ParamError, match="coupling_factor"):
        DualPi2Params(coupling_factor=2.5)  # a u8 in the kernel
    assert DualPi2Params(alpha=0.003, arithmetic="float").alpha == 0.003


def kernel_model(qdelays_ns: list[int], target_ns: int, a256: int, b256: int,
                 drop_overload: bool, k: int) -> list[int]:
    """calculate_probability() once per tupdate, written from the C: s64 delta, prob in u32."""
    alpha, beta = scale(a256), scale(b256)
    prob, last, out = 0, 0, []
    for qdelay in qdelays_ns:
        delta = (qdelay - target_ns) * alpha + (qdelay - last) * beta
        last = qdelay
        # new_prob is a u32: the s64 sum is stored modulo 2^32, and only a result that moved
        # the wrong way is caught (if (new_prob < q->pi2_prob) new_prob = MAX_PROB; ...)
        if delta > 0:
            new = (delta // 64 + prob) % 2**32  # __scale_delta(delta) + q->pi2_prob
            new = U32_MAX if new < prob else new
        else:
            new = (prob - (-delta) // 64) % 2**32  # q->pi2_prob - __scale_delta(~delta + 1)
            new = 0 if new > prob else new
        if not drop_overload:
            new = min(new, U32_MAX // k)
        prob = new
        out.append(prob)
    return out


# A classic head-delay sequence (ms, whole ns) that crosses every branch: below target, a
# rise, a slow integral climb, a spike that saturates at MAX_PROB, a fall back to 0 (in steps
# small enough not to wrap: see the next test).
QDELAYS_MS = ([0.0, 3.2, 7.9, 14.999999, 15.0, 15.000001, 18.4, 22.75, 30.1, 29.9, 27.3]
              + [25.0] * 30 + [150.0, 400.0, 900.0, 1500.0, 2000.0] + [2000.0] * 20
              + [1750.0, 1500.0, 1250.0, 1000.0, 750.0, 500.0, 250.0, 60.0, 12.0, 4.5, 0.0]
              + [0.0] * 40 + [16.0, 0.001, 0.0])


@pytest.mark.parametrize("drop_overload,k", [(True, 2), (False, 2), (True, 3)])
def test_probability_sequence_equals_the_kernels_integer_model(drop_overload, k):
    pol = DualPi2(DualPi2Params(drop_overload=drop_overload, coupling_factor=k))
    got = []
    for ms in QDELAYS_MS:
        pol.update(qs(c_ms=ms))
        got.append(pol.prob_u32)
    want = kernel_model([round(ms * 1e6) for ms in QDELAYS_MS], 15_000_000, 41, 819, drop_overload, k)
    assert got == want
    assert max(want) == (U32_MAX if drop_overload else U32_MAX // k) and min(want[1:]) == 0


def test_a_large_fall_of_the_delay_wraps_as_in_the_kernel():
    """A quirk of calculate_probability(): a fall of the queue delay by more than
    2^32 * 64 / beta_int ns (312 ms with the defaults) in one tupdate makes the scaled delta
    exceed a u32, and the wrap is not always caught. From p' = 1 (2 s of delay) to 60 ms, the
    kernel's p' becomes 0.80, not 0; the float form goes to 0."""
    want = kernel_model([2_000_000_000] * 20 + [60_000_000], 15_000_000, 41, 819, True, 2)
    assert want[-2] == U32_MAX
    assert want[-1] == (U32_MAX - (1940_000_000 * 879 - 45_000_000 * 44) // 64) % 2**32
    assert 0.80 < want[-1] / U32_MAX < 0.81
    pol = DualPi2()
    for ms in [2000.0] * 20 + [60.0]:
        pol.update(qs(c_ms=ms))
    assert pol.prob_u32 == want[-1]
    flt = DualPi2(DualPi2Params(arithmetic="float"))
    for ms in [2000.0] * 20 + [60.0]:
        flt.update(qs(c_ms=ms))
    assert flt.prob == 0.0


def test_kernel_and_float_forms_differ_by_the_truncated_gains():
    kern, flt = DualPi2(), DualPi2(DualPi2Params(arithmetic="float"))
    for _ in range(50):
        kern.update(qs(c_ms=20))
        flt.update(qs(c_ms=20))
    # 50 updates at 5 ms over target: the integral term alone differs by 0.000071 Hz * 0.25 s
    assert kern.prob - flt.prob == pytest.approx((44 / 64 * 1e9 / U32_MAX - 0.16) * 0.005 * 50
                                                 + (879 / 64 * 1e9 / U32_MAX - 3.2) * 0.020, abs=1e-7)


def test_coin_probabilities_are_the_kernels_rolls():
    pol = DualPi2()
    pol.prob_u32 = 1 << 30  # p' = 1/4
    d = pol.decision()
    # classic: dualpi2_roll(prob) && dualpi2_roll(prob), each true (prob + 1) times in 2^32
    assert d.classic.p_mark == ((2**30 + 1) / 2**32) ** 2 and d.classic.p_drop == 0
    assert d.l4s.p_mark == (2 * 2**30 + 1) / 2**32 and d.l4s.p_drop == 0  # roll(prob * k)
    assert d.classic.coin_at_dequeue and d.l4s.coin_at_dequeue  # drop_dequeue, Linux's default
    pol.prob_u32 = (1 << 31) + 5  # k * prob > MAX_PROB: overload
    d = pol.decision()
    p_c = ((2**31 + 6) / 2**32) ** 2
    assert d.classic.p_drop == p_c and d.classic.p_mark == 0
    assert d.l4s.p_drop == p_c and d.l4s.p_mark == 1 - p_c  # classic drop first, else mark
    pol.prob_u32 = 0  # even p' = 0 rolls true once in 2^32
    assert pol.decision().l4s.p_mark == 1 / 2**32


def test_step_in_packets_and_min_qlen_step_reach_the_decision():
    d = DualPi2(DualPi2Params(step_thresh_pkts=5, min_qlen_step=2, drop_early=True)).update(qs())
    assert d.l4s.step_threshold_pkts == 5 and d.l4s.step_threshold_ms is None
    assert d.l4s.min_qlen_step == 2 and not d.l4s.coin_at_dequeue
    assert d.l4s.action(u=0.99, qlen_after=6).name == "MARK"
    assert d.l4s.action(u=0.99, qlen_after=5, sojourn_ms=50).name == "ENQUEUE"
    assert d.classic.step_threshold_pkts is None and d.classic.step_threshold_ms is None


def test_testbed_policies_prints_the_gains_that_run():
    from click.testing import CliRunner

    from orchestrator.commands.policies import policies_cmd

    out = CliRunner().invoke(policies_cmd, []).output
    block = out[out.index("dualpi2  ["):]
    assert "effective gains: alpha 0.156250 beta 3.195312 as tc prints them" in block
    assert "applied: alpha 0.160071 Hz beta 3.197783 Hz (44/879 per 64 ns from 41/819" in block
    assert "on ebpf: coin tossed at enqueue" in block


def test_a_recorded_run_gives_the_kernels_probabilities():
    """The first 600 updates of a real DualPI2 run on nfqueue (tests/data/: the head delays
    the link handed the policy, and the probabilities the run logged). Fed the same delays, the
    kernel model written above gives the same p' sequence as the policy, and the logged
    probabilities are the kernel's coins on it: classic ((p+1)/2^32)^2, L (2p+1)/2^32."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / "dualpi2_recorded_updates.json").read_text())
    rows = data["rows"]
    qdelay_ns = [round(max(c_ms, l_ms) / 1e3 * 1e9) for c_ms, l_ms, *_ in rows]
    want = kernel_model(qdelay_ns, 15_000_000, 41, 819, True, 2)
    pol = DualPi2()
    got = []
    for c_ms, l_ms, *_ in rows:
        pol.update(qs(c_ms=c_ms, l_ms=l_ms))
        got.append(pol.prob_u32)
    assert got == want and max(want) > 2**28  # p' went well above 1/16 in this run
    for (_, _, p_c, p_l, p_l_drop), prob in zip(rows, want, strict=True):
        assert p_c == ((prob + 1) / 2**32) ** 2
        assert p_l == (2 * prob + 1) / 2**32 and p_l_drop == 0.0
