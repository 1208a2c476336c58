"""A link schedule as router commands, generated as data: every ipfw command parses under the
model of ipfw(8)'s parser the FreeBSD role tests use; tc commands are exact argument lists."""

from __future__ import annotations

import pytest

from orchestrator.bottleneck import htb_schedule as hs
from orchestrator.bottleneck import schedule_commands as sc
from orchestrator.providers.ssh import freebsd
from orchestrator.spec import dynamic as dm
from tests.test_playbooks_freebsd import check_all, parse_config, sysctl_map, topology

STEP = [{"at": "0s", "rate": "50mbit"}, {"at": "10s", "rate": "10mbit"}, {"at": "20s", "rate": "50mbit"}]
SAT = {"rate": [{"at": "0s", "rate": "100mbit"}, {"at": "15s", "rate": "40mbit"}],
       "rtt": [{"at": "0s", "rtt": "600ms"}, {"at": "15s", "rtt": "40ms"}]}


def test_dummynet_rate_steps_repeat_the_whole_pipe():
    bn, r1, hosts = topology(fwd=0.005, rev=0.015)
    tl = sc.dummynet_timeline(bn, dm.parse({"rate": STEP}), 30)
    assert [(t, rate) for t, rate, _ in tl] == [(0.0, 50e6), (10.0, 10e6), (20.0, 50e6)]
    sysctls = sysctl_map(bn)
    for _, rate, cmds in tl:
        assert len(cmds) == 1
        pipe = parse_config(cmds[0], sysctls)
        assert pipe["bw"] == rate and pipe["delay_ms"] == 5 and pipe["queue"] == (125, "slots")
    assert tl[1][2][0] == ["ipfw", "pipe", "7101", "config", "bw", "10Mbit/s", "delay", "5", "queue", "125"]
    # the same pipe the setup configured, so the schedule's commands act on the live link
    setup, _ = check_all(freebsd.ipfw_commands(bn, r1, hosts), sysctls)
    assert ("pipe", 7101) in setup


def test_dummynet_rtt_steps_change_both_pipes():
    bn, _, _ = topology(fwd=0.005, rev=0.015)  # a quarter of the RTT forward
    tl = sc.dummynet_timeline(bn, dm.parse(SAT), 30, aqm="pie", aqm_args={"target": "15ms"})
    assert [t for t, _, _ in tl] == [0.0, 15.0]
    sysctls = sysctl_map(bn)
    fwd0, rev0 = (parse_config(c, sysctls) for c in tl[0][2])
    assert fwd0["bw"] == 100_000_000 and fwd0["delay_ms"] == 150 and rev0["delay_ms"] == 450
    assert fwd0["aqm"] == "pie"
    fwd1, rev1 = (parse_config(c, sysctls) for c in tl[1][2])
    assert fwd1["bw"] == 40_000_000 and fwd1["delay_ms"] == 10 and rev1["delay_ms"] == 30


def test_dummynet_refuses_what_ipfw_would_round():
    bn, _, _ = topology()
    dyn = dm.parse({"rtt": [{"at": "0s", "rtt": "20ms"}, {"at": "1s", "rtt": "20.5ms"}]})
    with pytest.raises(Exception, match="whole milliseconds"):
        sc.dummynet_timeline(bn, dyn, 10)


def test_linux_timeline_is_tc_class_change():
    bn, _, _ = topology()
    tl = sc.linux_timeline(bn, dm.parse({"rate": STEP}), 15)
    assert tl == [(0.0, 50e6, [["tc", "class", "change", "dev", "vtnet3", "parent", "1:", "classid", "1:1",
                                "htb", "rate", "50000000bit", "ceil", "50000000bit"]]),
                  (10.0, 10e6, [["tc", "class", "change", "dev", "vtnet3", "parent", "1:", "classid", "1:1",
                                 "htb", "rate", "10000000bit", "ceil", "10000000bit"]])]


def test_the_timer_runs_a_timeline_as_given():
    bn, _, _ = topology()
    tl = sc.dummynet_timeline(bn, dm.parse({"rate": STEP}), 30)
    cfg = {"timeline": [[t, r, c] for t, r, c in tl]}
    got = hs.plan(cfg, 100.0)
    assert [(due, rate) for due, rate, _ in got] == [(100.0, 50e6), (110.0, 10e6), (120.0, 50e6)]
    assert got[1][2] == tl[1][2]
    assert hs.batched(got[1][2], "/nonexistent") == got[1][2]  # ipfw is never batched through tc


def test_netem_timeline_changes_the_reverse_delay():
    bn, _, _ = topology(fwd=0.0, rev=0.02)
    tl = sc.netem_timeline(bn, dm.parse(SAT), ["vtnet1", "vtnet2"])
    assert [t for t, _, _ in tl] == [0.0, 15.0]
    assert tl[1][2][1] == ["tc", "qdisc", "change", "dev", "vtnet2", "root", "netem", "delay", "40000us",
                           "limit", "100000"]
    bn2, _, _ = topology(fwd=0.005, rev=0.015)
    with pytest.raises(Exception, match="reverse path"):
        sc.netem_timeline(bn2, dm.parse(SAT), ["vtnet1"])


def test_dummynet_datapath_builds_the_runs_timeline():
    """The dummynet datapath turns the run's dynamics (as the run leaves them on the testbed)
    into the pipe commands of the router's own AQM and parameters."""
    from types import SimpleNamespace

    from orchestrator.bottleneck.dummynet import DummynetDatapath

    bn, r1, hosts = topology(fwd=0.0, rev=0.02)

    class Tb:
        bottleneck = bn
        extra = {"link_dynamics": dm.parse({"rate": STEP}).to_json()}

    dp = DummynetDatapath.__new__(DummynetDatapath)
    dp.testbed = Tb()
    dp._router = lambda: SimpleNamespace(aqm="codel", aqm_args={"target": "5ms"})
    tl = dp.timeline(30)
    pipes = [parse_config(cmds[0], sysctl_map(bn)) for _, _, cmds in tl]
    assert [p["bw"] for p in pipes] == [50e6, 10e6, 50e6]
    assert all(p["aqm"] == "codel" and p["aqm_params"] == {"target": 5000} for p in pipes)
    Tb.extra = {}
    assert dp.timeline(30) == []
