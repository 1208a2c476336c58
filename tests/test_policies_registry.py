"""The policy registry, parameter parsing, determinism and the reading of a decision."""

import dataclasses

import numpy as np
import pytest

import policies
from policies.base import Action, ClassDecision, ClassState, Decision, ParamError, QueueState

BUILTIN = ["fifo", "red", "codel", "pie", "pi2", "dualpi2"]


def random_states(seed: int, n: int = 300) -> list[QueueState]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cls = [ClassState(sojourn_ms=s, head_sojourn_ms=s, backlog_pkts=int(s * 4),
                          backlog_bytes=int(s * 6000), arrivals=int(rng.integers(0, 80)))
               for s in rng.gamma(2.0, 8.0, size=2)]
        out.append(QueueState(t=i * 0.016, dt=0.016, link_rate_bps=50e6, l4s=cls[0], classic=cls[1]))
    return out


def test_builtins_and_llm_policies_are_registered():
    assert set(BUILTIN + ["aqm-llm", "aqm-llm-student"]) <= set(policies.REGISTRY)
    for name in BUILTIN:
        assert policies.resolve(name).name == name


def test_unknown_policy_lists_the_known_ones():
    with pytest.raises(ParamError, match=r"unknown policy 'pi3'.*dualpi2.*fifo"):
        policies.make("pi3", {})


@pytest.mark.parametrize("name,key,bad", [
    ("fifo", "limit", "many"), ("red", "w_q", "0"), ("codel", "target_ms", "-1"),
    ("pie", "alpha", "-0.1"), ("pi2", "tupdate_ms", "0"), ("dualpi2", "coupling_factor", "two"),
    ("dualpi2", "drop_overload", "sometimes"), ("dualpi2", "c_protection", "150"),
])
def test_bad_policy_args_give_a_param_error_naming_the_key(name, key, bad):
    with pytest.raises(ParamError, match=f"'{key}'"):
        policies.make(name, {key: bad})


def test_unknown_key_is_named():
    with pytest.raises(ParamError, match="'tartget_ms'"):
        policies.make("pie", {"tartget_ms": "10"})


def test_yaml_scalars_and_strings_parse_alike():
    a = policies.make("dualpi2", {"target_ms": 10, "drop_overload": False, "limit": 500})
    b = policies.make("dualpi2", {"target_ms": "10", "drop_overload": "false", "limit": "500"})
    assert a.params == b.params
    assert (a.params.target_ms, a.params.drop_overload, a.params.limit) == (10.0, False, 500)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_param_has_a_default_and_help(name):
    cls = policies.resolve(name)
    for f in dataclasses.fields(cls.Params):
        assert f.default is not dataclasses.MISSING, f"{name}.{f.name} has no default"
        assert f.metadata.get("help"), f"{name}.{f.name} has no help"
    cls()  # the defaults are valid


def test_describe_lists_params_and_datapaths():
    info = {d["name"]: d for d in policies.describe()}
    assert set(BUILTIN) <= set(info)
    dp = info["dualpi2"]
    assert dp["doc"] and "kernel" in dp["datapaths"]
    step = next(p for p in dp["params"] if p["name"] == "step_thresh_ms")
    assert step["default"] == 1.0 and step["help"]
    assert info["codel"]["per_packet"] is True
    assert info["codel"]["datapaths"] == ["nfqueue", "kernel", "dummynet"]


def test_lazy_registration_imports_on_use(monkeypatch):
    monkeypatch.setattr(policies, "REGISTRY", dict(policies.REGISTRY))
    policies.register("policies.pie:Pie", "pie-by-path")
    assert policies.REGISTRY["pie-by-path"] == "policies.pie:Pie"
    assert isinstance(policies.make("pie-by-path", {"target_ms": "5"}), policies.resolve("pie"))
    policies.register("policies.nowhere:Nothing", "ghost")
    ghost = next(d for d in policies.describe() if d["name"] == "ghost")
    assert ghost["doc"].startswith("unavailable")
    with pytest.raises(ValueError):
        policies.register("policies.pie.Pie", "no-colon")


@pytest.mark.parametrize("name", BUILTIN)
def test_update_is_deterministic(name):
    a, b = policies.make(name, {}), policies.make(name, {})
    for s in random_states(7):
        assert a.update(s) == b.update(s)


# Published defaults, read in the sources named, not in this code: RFC 8033 section 4 (PIE),
# RFC 8289 section 4.3 (CoDel), tc-dualpi2(8) and sch_dualpi2.c (DualPI2), sch_pi2.c of the
# PI2 paper (CoNEXT 2016: gains 10/16 and 100/16 Hz on k*p', k = 2), Floyd's RED parameter notes
# (w_q 0.002, max_p 0.1, gentle; min_th 5 / max_th 15 packets as in ns-2).
PUBLISHED = {
    "pie": {"target_ms": 15.0, "tupdate_ms": 15.0, "alpha": 0.125, "beta": 1.25, "max_burst_ms": 150.0,
            "mark_ecnth": 0.1},
    "codel": {"target_ms": 5.0, "interval_ms": 100.0},
    "dualpi2": {"limit": 10000, "target_ms": 15.0, "tupdate_ms": 16.0, "alpha": 0.16, "beta": 3.2,
                "coupling_factor": 2.0, "step_thresh_ms": 1.0, "c_protection": 0.10, "drop_overload": True},
    "pi2": {"target_ms": 20.0, "tupdate_ms": 30.0, "alpha": 10 / 16 / 2, "beta": 100 / 16 / 2, "k": 2.0},
    "red": {"w_q": 0.002, "max_p": 0.1, "gentle": True, "min_th": 5.0, "max_th": 15.0},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_defaults_are_the_published_ones(name):
    params = policies.make(name, {}).params
    assert {k: getattr(params, k) for k in PUBLISHED[name]} == pytest.approx(PUBLISHED[name])


def held(sojourn_ms: float, pkts: int) -> QueueState:
    """A classic queue holding `sojourn_ms` of queue (`pkts` packets), busy (80 arrivals per
    update); the L4S queue sees arrivals too but stays empty."""
    c = ClassState(sojourn_ms=sojourn_ms, head_sojourn_ms=sojourn_ms, backlog_pkts=pkts,
                   backlog_bytes=pkts * 1500, arrivals=80)
    return QueueState(t=0.0, dt=0.016, link_rate_bps=50e6, l4s=ClassState(arrivals=80), classic=c)


def signal(d) -> float:
    return max(c.p_drop + c.p_mark for c in (d.l4s, d.classic))


@pytest.mark.parametrize("name", ["pie", "pi2", "dualpi2"])
def test_pi_controllers_signal_above_their_published_target_and_not_below(name):
    """A queue held at half the published target gives no signal once the proportional kick of
    its first update (the delay rising from 0) has been integrated away: none in seconds 1-3
    (below 1e-6).
    One held at three times the target gives a signal within a second, and it keeps rising."""
    target = PUBLISHED[name]["target_ms"]
    low, high = policies.make(name, {}), policies.make(name, {})
    n = int(1.0 / (PUBLISHED[name]["tupdate_ms"] / 1e3))  # updates per second
    lows = [signal(low.update(held(target / 2, 20))) for _ in range(3 * n)]
    assert max(lows[n:]) < 1e-6  # sch_dualpi2 arithmetic keeps a 2^-32 floor
    ps = [high.update(held(3 * target, 200)).classic for _ in range(n)]
    assert signal(Decision(classic=ps[-1])) > 0.0
    assert ps[-1].p_drop + ps[-1].p_mark > ps[n // 2].p_drop + ps[n // 2].p_mark


def test_red_follows_floyds_ramp_once_the_average_settles():
    """RED's average converges to a held queue; p is then Floyd's linear (or gentle) ramp:
    max_p * (q - min_th) / (max_th - min_th), max_p + (1 - max_p) * (q - max_th) / max_th."""
    for q, p in ((3, 0.0), (10, 0.1 * 5 / 10), (20, 0.1 + 0.9 * 5 / 15)):
        red = policies.make("red", {})
        for _ in range(200):  # 16,000 arrivals: (1 - 0.002)^16000 ~ 1e-14 of the start is left
            d = red.update(held(1.0, q))
        assert d.classic.p_mark == pytest.approx(p, abs=1e-9) and d.l4s == d.classic


def test_fifo_and_codel_updates_never_signal():
    """FIFO drops only at its limit, CoDel only at dequeue (on_dequeue): their updates say nothing
    even for a second-long queue."""
    for name in ("fifo", "codel"):
        pol = policies.make(name, {})
        assert all(pol.update(held(1000.0, 5000)) == Decision() for _ in range(50))


def test_reading_a_decision_per_packet():
    d = ClassDecision(p_drop=0.1, p_mark=0.2, step_threshold_ms=1.0)
    assert d.action(0.05) is Action.DROP
    assert d.action(0.25) is Action.MARK and d.action(0.25, ecn_capable=False) is Action.DROP
    assert d.action(0.5) is Action.ENQUEUE and d.action(0.5, sojourn_ms=2.0) is Action.MARK
    assert d.action(0.05, sojourn_ms=2.0) is Action.DROP


@pytest.mark.parametrize("name", ["pie", "pi2", "dualpi2"])
def test_the_datapath_is_asked_to_update_at_the_published_interval(name):
    tupdate_s = policies.make(name, {}).queue_config().tupdate_s
    assert tupdate_s == pytest.approx(PUBLISHED[name]["tupdate_ms"] / 1e3)


# Parameter ranges at their edges: a zero interval, target, size or probability is refused; the
# smallest meaningful values (a one-packet queue, a half-millisecond target, a probability or
# weight of 1, DualPI2's smallest gain tc can send, 1/256 Hz) are accepted.
@pytest.mark.parametrize("name,key,value,ok", [
    *[(n, k, "0", False) for n in ("pie", "pi2", "dualpi2") for k in ("target_ms", "tupdate_ms")],
    ("codel", "target_ms", "0", False), ("codel", "interval_ms", "0", False),
    *[(n, "limit", "0", False) for n in ("fifo", "red", "pie", "pi2", "codel", "dualpi2")],
    *[(n, "limit", "1", True) for n in ("fifo", "red", "pie", "pi2", "codel", "dualpi2")],
    *[(n, "target_ms", "0.5", True) for n in ("pie", "pi2", "dualpi2", "codel")],
    ("red", "max_p", "0", False), ("red", "max_p", "1", True), ("red", "w_q", "0", False),
    ("red", "w_q", "1", True), ("red", "w_q", "1.5", False), ("red", "avpkt", "0", False),
    ("red", "avpkt", "1", True), ("dualpi2", "alpha", "0.00390625", True),
    ("dualpi2", "alpha", "0.001", False),
])
def test_parameter_edges(name, key, value, ok):
    if ok:
        assert getattr(policies.make(name, {key: value}).params, key) == pytest.approx(float(value))
    else:
        with pytest.raises(ParamError, match=f"'{key}'"):
            policies.make(name, {key: value})
