"""An unresponsive UDP flow at 120% of the link rate, next to an L4S flow: the testbed survives
it (the link delivers its rate, a flow afterwards runs normally), and nothing the workloads
started or registered outlives them: no process, no struct_ops, no tc filter, no policy
route, no cleanup record. The same after Ctrl-C in the middle of a run, and `testbed down`
unregisters a congestion control that a killed run left behind."""

from __future__ import annotations

import subprocess

import pytest

from orchestrator import providers as tbmod
from orchestrator import workloads
from orchestrator.providers import netns
from orchestrator.spec.scenario import Scenario
from orchestrator.workloads import ccroute, ect1, l4s

from conftest import dumbbell_yaml, needs_root, run_cli, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_root]

RATE_BPS = 50e6


def leftovers(tb) -> list[str]:
    """Everything of ours still there."""
    out = []
    for host in tb.hosts:
        cmds = [_cmdline(pid) for pid in _pids(tb.netns(host))]
        out += [f"{host}: process {c}" for c in cmds if c and "orchestrator.bottleneck.delayline" not in c]
        if host != tb.bottleneck.router and ccroute.installed(tb, host):
            out.append(f"{host}: ip rule {ccroute.PREF}")
        for iface in tb.host(host).interfaces:
            if ect1.attached(tb, host, iface.name):
                out.append(f"{host}:{iface.name}: tc filter")
    if l4s.registered(l4s.cc_name(tb)):
        out.append(f"struct_ops {l4s.cc_name(tb)}")
    state = tbmod.load(tb.name)
    out += [f"cleanup record {c}" for c in state.cleanups]
    out += [f"process record {p.tag}" for p in state.processes if p.tag != "delayline"]
    return out


def _pids(ns: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@pytest.fixture
def dumbbell(netns_testbed):
    return netns_testbed(dumbbell_yaml(unique_name("wld")))


def test_unresponsive_udp_at_120_percent_and_clean_teardown(dumbbell, tmp_path):
    tb = dumbbell
    scenario = Scenario.model_validate({"duration": "4s", "flows": [
        {"name": "flood", "kind": "udp", "src": "s2", "dst": "rx", "rate": "60mbit", "packet_size": 1400},
        {"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx"},
    ]})
    reports = {r["name"]: r for r in workloads.run_flows(tb, scenario, tmp_path / "flood")}
    flood = reports["flood"]
    sent_mbps = flood["bytes_sent"] * 8 / 4 / 1e6
    rx = flood["raw"]["server"]
    got_mbps = flood["bytes_received"] * 8 / (rx["last"] - rx["first"]) / 1e6
    print(f"\nUDP sent {sent_mbps:.1f} Mbit/s, received {got_mbps:.1f} Mbit/s, loss {flood['loss']:.1%}, "
          f"one-way delay {flood['owd_ms']}; L4S got {reports['l4s']['bytes_received'] * 8 / 4e6:.1f} Mbit/s")
    assert sent_mbps >= 1.1 * RATE_BPS / 1e6  # it really overloaded the link
    assert flood["loss"] >= 0.1
    assert got_mbps <= RATE_BPS / 1e6  # the shaper held
    assert flood["ecn_counts"]["not-ect"] == flood["packets_received"]
    assert leftovers(tb) == []

    after = Scenario.model_validate({"duration": "2s", "flows": [
        {"name": "after", "kind": "tcp", "src": "s1", "dst": "rx", "cc": "cubic"}]})
    rep = workloads.run_flows(tb, after, tmp_path / "after")[0]
    assert rep["error"] is None and rep["bytes_received"] * 8 / 2 >= 0.5 * RATE_BPS
    assert leftovers(tb) == []

    assert run_cli("down", tb.name).returncode == 0
    assert not netns._namespaces(tb.name)
    assert not l4s.registered(l4s.cc_name(tb))


def test_ctrl_c_mid_run_leaves_nothing(dumbbell, tmp_path):
    tb = dumbbell
    scenario = Scenario.model_validate({"duration": "6s", "flows": [
        {"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx"},
        {"name": "cubic", "kind": "tcp", "src": "s2", "dst": "rx", "cc": "cubic", "ecn": "ect0"},
        {"name": "udp", "kind": "udp", "src": "s2", "dst": "rx", "rate": "5mbit"},
    ]})

    def interrupt(elapsed: float, total: float) -> None:
        if elapsed >= 1.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        workloads.run_flows(tb, scenario, tmp_path, on_progress=interrupt)
    assert leftovers(tb) == []
    assert tb.run("s2", ["sysctl", "-n", "net.ipv4.tcp_ecn"]).stdout.strip() == "2"
    assert tb.run("s1", ["sysctl", "-n", "net.ipv4.tcp_pacing_ca_ratio"]).stdout.strip() == "120"


def test_down_unregisters_what_a_killed_run_left(dumbbell):
    tb = dumbbell
    cc = l4s.register_cc(tb)  # as a run killed with -9 would leave it: registered, recorded
    ect1.attach(tb, "s1", "e-r1")
    assert l4s.registered(cc.name) and ect1.attached(tb, "s1", "e-r1")
    assert run_cli("down", tb.name).returncode == 0
    assert not l4s.registered(cc.name)
