"""Bad flow definitions get a clear error, naming the flow and the key, before any traffic:
no process starts, no kernel object is made, no report is written."""

from __future__ import annotations

import os
import shutil

import pytest

from orchestrator import workloads
from orchestrator.errors import UserError
from orchestrator.spec.scenario import FlowSpec
from orchestrator.workloads import l4s

from conftest import dumbbell_yaml, needs_root, unique_name

pytestmark = [pytest.mark.integration, needs_root]


@pytest.fixture(scope="module")
def tb():
    from orchestrator.providers import netns
    from orchestrator.spec import schema as specmod

    spec = specmod.parse(dumbbell_yaml(unique_name("wle")), "errors-test")
    testbed = netns.up(spec)
    try:
        yield testbed
    finally:
        netns.down(spec.name)


def flow(**kw) -> FlowSpec:
    return FlowSpec.model_validate({"name": "bad", "kind": "tcp", "src": "s1", "dst": "rx",
                                    "duration": "2s", **kw})


def assert_refused(tb, out, flows: list[FlowSpec], *words: str, duration: float | None = None) -> str:
    with pytest.raises(UserError) as err:
        workloads.run_flows(tb, flows, out, duration)
    msg = str(err.value)
    for word in words:
        assert word in msg, msg
    assert not (out / "flows").exists() and not (out / "logs").exists()
    assert [p.tag for p in tb.processes] == ["delayline"]
    assert tb.cleanups == [] and not l4s.registered(l4s.cc_name(tb))
    return msg


CASES = {
    "unknown host": (dict(dst="nosuch"), ("'bad'", "dst", "unknown host 'nosuch'", "rx")),
    "router as end": (dict(src="r1"), ("'bad'", "src", "router")),
    "unknown cc": (dict(cc="nosuchcc"), ("'bad'", "cc", "'nosuchcc'", "not available", "cubic")),
    "ect1 on classic": (dict(ecn="ect1"), ("'bad'", "ecn", "kind l4s")),
    "cc on udp": (dict(kind="udp", rate="1mbit", cc="cubic"), ("'bad'", "cc", "no congestion control")),
    "l4s with bbr": (dict(kind="l4s", cc="bbr"), ("'bad'", "cc", "'prague' or 'scalable'")),
    "runs past the end": (dict(start="1s", duration="2s"), ("'bad'", "duration", "lasts 2s")),
    "starts past the end": (dict(start="2s", duration="1s"), ("'bad'", "start", "lasts 2s")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_flow_is_refused_before_traffic(tb, tmp_path, case):
    kw, words = CASES[case]
    flows = [FlowSpec.model_validate({"name": "good", "kind": "l4s", "src": "s2", "dst": "rx",
                                      "duration": "2s"}), flow(**kw)]
    print(f"\n{case}: {assert_refused(tb, tmp_path, flows, *words, duration=2.0)}")


def test_prague_where_the_kernel_has_none(tb, tmp_path):
    if l4s.has_prague(tb, "s1"):
        pytest.skip("this kernel has TCP Prague")
    msg = assert_refused(tb, tmp_path, [flow(kind="l4s", cc="prague")], "'bad'", "cc", "Prague",
                         "not available", "scalable")
    print(f"\n{msg}")


def test_l4s_where_bpf_cannot_be_built(tb, tmp_path, monkeypatch):
    """A machine without clang/bpftool (and no Prague): the l4s kind is unavailable."""
    if l4s.has_prague(tb, "s1"):
        pytest.skip("this kernel has TCP Prague, which needs no BPF")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ip", "sysctl", "modinfo", "tc", "ss", "iperf3"):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bindir / tool)
    monkeypatch.setenv("PATH", str(bindir))
    msg = assert_refused(tb, tmp_path / "out", [flow(kind="l4s")], "'bad'", "kind", "clang")
    print(f"\n{msg}")


def test_validate_alone_accepts_good_flows(tb):
    workloads.validate(tb, [flow(cc="reno", ecn="ect0"), flow(name="l", kind="l4s"),
                            flow(name="u", kind="udp", rate="5mbit", ecn="ce"),
                            flow(name="p", kind="scapy", pattern="mixed-ecn")])
    assert [p.tag for p in tb.processes] == ["delayline"]
