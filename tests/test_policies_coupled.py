"""Issue 14, item 5: PIE, PI2 and RED as the base AQM of a DualQ coupled as DualPI2 couples
(policies/coupled.py), and collect's `dualq` matrix key that runs every behaviour that way."""

from __future__ import annotations

import math

import pytest

import policies
from orchestrator.errors import SpecError
from orchestrator.experiment import collect
from policies.base import ClassState, QueueState
from policies.dualpi2 import DualPi2
from policies.explore import explore

BASES = ("pie", "pi2", "red")


def loaded(ms: float = 40.0, pkts: int = 5) -> QueueState:
    """A standing queue in both classes: every base AQM signals on it."""
    c = ClassState(head_sojourn_ms=ms, backlog_pkts=pkts, backlog_bytes=pkts * 1500, arrivals=50)
    return QueueState(t=1.0, dt=0.016, link_rate_bps=10e6, l4s=c, classic=c)


def drive(name: str, dualq: bool, n: int = 40):  # noqa: ANN201
    args = {"max_burst_ms": 0} if name == "pie" else {}
    pol = policies.make(name, {**args, "dualq": dualq})
    return [pol.update(loaded()) for _ in range(n)][-1], pol


@pytest.mark.parametrize("name", BASES)
def test_classic_gets_the_base_probability_and_l_its_coupled_square_root(name: str) -> None:
    single, _ = drive(name, False)
    dual, _ = drive(name, True)
    p_c = single.classic.p_drop + single.classic.p_mark
    assert 0 < p_c < 0.25  # signalling, below the cap of p_L
    # the classic queue: the single-queue AQM's own decision, tossed at dequeue as DualPI2
    assert (dual.classic.p_drop, dual.classic.p_mark) == (single.classic.p_drop, single.classic.p_mark)
    assert dual.classic.coin_at_dequeue
    assert dual.l4s.p_drop == 0.0
    assert dual.l4s.p_mark == pytest.approx(2 * math.sqrt(p_c), rel=1e-12)


@pytest.mark.parametrize("name", BASES)
def test_l_queue_runs_dualpi2s_native_step_and_queues(name: str) -> None:
    dual, pol = drive(name, True)
    ref = DualPi2().decision().l4s
    got = dual.l4s
    assert (got.step_threshold_ms, got.step_threshold_pkts, got.min_qlen_step, got.coin_at_dequeue) == \
        (ref.step_threshold_ms, ref.step_threshold_pkts, ref.min_qlen_step, ref.coin_at_dequeue) == \
        (1.0, None, 0, True)
    qc = pol.queue_config()
    assert qc.dualq and qc.c_protection == DualPi2().queue_config().c_protection == 0.10
    assert qc.limit_pkts is None  # the testbed's buffer, as the single-queue AQM
    assert qc.tupdate_s == policies.make(name, {}).queue_config().tupdate_s  # its own tick


@pytest.mark.parametrize("name", BASES)
def test_without_dualq_nothing_changes(name: str) -> None:
    single, pol = drive(name, False)
    assert pol.queue_config() == policies.make(name, {}).queue_config()
    assert not pol.queue_config().dualq
    if name != "pi2":  # one queue: the same signal for both classes
        assert single.l4s == single.classic


def test_l_probability_is_capped_at_one() -> None:
    red = policies.make("red", {"dualq": True, "min_th": 1, "max_th": 10, "w_q": 1.0})
    d = red.update(loaded(pkts=6))  # 12 in all: p_b = 0.1 + 0.9 * 2 / 10 = 0.28: 2 sqrt(0.28) > 1
    assert d.classic.p_mark == pytest.approx(0.28)
    assert d.l4s.p_mark == 1.0


def test_pie_queue_delay_is_the_older_head_as_linux_dualpi2() -> None:
    """PIE in DualQ sees max(L head, C head), DualPI2's default 'max' qdelay."""
    pie = policies.make("pie", {"dualq": True, "max_burst_ms": 0})
    c = ClassState(head_sojourn_ms=30.0)
    pie.update(QueueState(t=0.0, dt=0.015, link_rate_bps=10e6, l4s=c))  # only the L queue is old
    assert pie.qdelay_old == pytest.approx(0.030)


def test_exploration_keeps_a_coupled_decision_coupled() -> None:
    dual, _ = drive("pie", True)
    d = explore(dual, 1.5, 1e-5)
    p_c = d.classic.p_drop + d.classic.p_mark
    assert d.l4s.p_mark == pytest.approx(2 * math.sqrt(p_c), rel=1e-9)


def test_dualq_travels_to_the_router_process() -> None:
    pol = policies.make("pi2", {"dualq": True})
    again = policies.from_config(policies.to_config(pol))
    assert again.params.dualq and again.queue_config().dualq


# ---------------------------------------------------------------- collect's `dualq` key
MATRIX = """duration: 15s
rate: [10mbit, 100mbit]
rtt: [20ms, 50ms]
buffer: [1.5bdp]
mixes: [{name: 1l-1c, l4s: 1, classic: 1}]
sample: 0
held_out: 0
"""


def test_dualq_matrix_runs_every_behaviour_in_dualq(tmp_path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX + "dualq: true\nbehaviours: [dualpi2, pie, pi2, red]\n")
    points = collect.plan(collect.load_matrix(path))
    assert {p["behaviour"] for p in points} == {"dualpi2", "pie", "pi2", "red"}
    for p in points:
        pol = policies.make(p["behaviour"], p["behaviour_args"])
        assert pol.queue_config().dualq, p
        assert ("dualq" in p["behaviour_args"]) == (p["behaviour"] != "dualpi2")


def test_default_matrix_runs_behaviours_as_before(tmp_path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX + "behaviours: [dualpi2, pie, pi2]\n")
    matrix = collect.load_matrix(path)
    assert matrix.dualq is False
    assert all(p["behaviour_args"] == {} for p in collect.plan(matrix))


def test_shipped_recipe_plans_bare_behaviours() -> None:
    from conftest import ROOT

    points = collect.plan(collect.load_matrix(ROOT / "models/aqm-llm/collect.yaml"))
    assert all(p["behaviour_args"] == {} for p in points)


@pytest.mark.parametrize("name", ["codel", "fifo"])
def test_dualq_refuses_a_behaviour_it_cannot_couple(tmp_path, name: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX + f"dualq: true\nbehaviours: [pie, {name}]\n")
    with pytest.raises(SpecError) as e:
        collect.load_matrix(path)
    text = str(e.value)
    assert str(path) in text and "behaviours[1]" in text and "dualq" in text
    if name == "codel":
        assert "per packet" in text
    (tmp_path / "ok.yaml").write_text(MATRIX + f"behaviours: [pie, {name}]\n")
    collect.load_matrix(tmp_path / "ok.yaml")  # without dualq it runs as before


def test_red_thresholds_follow_the_points_bdp(tmp_path) -> None:
    """min_th = 0.2 BDP, max_th = 3 min_th, as queue delay: the same share of the RTT at any
    rate, so at 10 and 100 Mbit/s RED's ramp covers the same queue delay."""
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX + "behaviours: [red]\n")
    points = collect.plan(collect.load_matrix(path))
    for p in points:
        rtt_ms = float(p["rtt"].removesuffix("ms"))
        assert p["behaviour_args"] == {"min_ms": pytest.approx(0.2 * rtt_ms),
                                       "max_ms": pytest.approx(0.6 * rtt_ms)}
    at = {(p["rate"], p["rtt"]): policies.make("red", p["behaviour_args"]) for p in points}
    slow, fast = at[("10mbit", "50ms")], at[("100mbit", "50ms")]
    bdp_pkts = {r: r * 0.050 / 8 / 1000 for r in (10e6, 100e6)}  # RED's avpkt: 1000 bytes
    assert slow.thresholds(10e6) == pytest.approx((0.2 * bdp_pkts[10e6], 0.6 * bdp_pkts[10e6]))
    assert fast.thresholds(100e6) == pytest.approx((0.2 * bdp_pkts[100e6], 0.6 * bdp_pkts[100e6]))

