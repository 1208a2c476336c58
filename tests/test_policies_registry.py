"""The policy registry, parameter parsing, determinism and the reading of a decision."""

import dataclasses

import numpy as np
import pytest

import policies
from policies.base import Action, ClassDecision, ClassState, ParamError, Policy, QueueState

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


@pytest.mark.parametrize("name", BUILTIN)
def test_decisions_are_valid_distributions(name):
    pol: Policy = policies.make(name, {})
    for s in random_states(3):
        d = pol.update(s)
        for c in (d.l4s, d.classic):
            assert 0 <= c.p_drop <= 1 and 0 <= c.p_mark <= 1 and c.p_drop + c.p_mark <= 1 + 1e-9


def test_reading_a_decision_per_packet():
    d = ClassDecision(p_drop=0.1, p_mark=0.2, step_threshold_ms=1.0)
    assert d.action(0.05) is Action.DROP
    assert d.action(0.25) is Action.MARK and d.action(0.25, ecn_capable=False) is Action.DROP
    assert d.action(0.5) is Action.ENQUEUE and d.action(0.5, sojourn_ms=2.0) is Action.MARK
    assert d.action(0.05, sojourn_ms=2.0) is Action.DROP
