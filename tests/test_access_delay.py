"""Sweep keys delay.<host>: each flow its own base RTT through its access link, changed in
place between sweep points (orchestrator/bottleneck/access_delay.py). Checked with ping through a real
testbed: the RTT seen from s1 is the bottleneck's plus twice s1's access delay."""

from __future__ import annotations

import re

import pytest

from orchestrator.bottleneck import access_delay
from orchestrator.errors import SpecError
from orchestrator.spec.scenario import Scenario
from orchestrator.spec.schema import Spec

from conftest import dumbbell_yaml, needs_root, unique_name


def test_scenario_accepts_delay_of_a_sender_and_refuses_others(tmp_path):
    import yaml

    path = tmp_path / "tb.yaml"
    path.write_text(dumbbell_yaml("chk"))
    spec = Spec.model_validate(yaml.safe_load(path.read_text()))
    flows = [{"name": "a", "kind": "tcp", "src": "s1", "dst": "rx"}]
    Scenario.model_validate({"flows": flows, "sweep": {"delay.s1": ["0ms", "35ms"]}}).check(spec.roles(), "x")
    for sweep, where in (({"delay.r1": ["5ms"]}, "delay.r1"), ({"delay.zz": ["5ms"]}, "delay.zz"),
                         ({"delay.s1": ["-5ms"]}, "delay.s1[0]")):
        with pytest.raises(SpecError, match=re.escape(where)):
            Scenario.model_validate({"flows": flows, "sweep": sweep}).check(spec.roles(), "x")


def ping_ms(tb, host: str) -> float:
    """The fastest of five pings: never below the configured RTT (the delay line does not
    release early), and not held up by the scheduler of a loaded machine as a single ping or a
    median can be."""
    out = tb.run(host, ["ping", "-c", "5", "-i", "0.2", tb.host("rx").address]).stdout
    return min(float(m) for m in re.findall(r"time=([0-9.]+) ms", out))


@pytest.mark.integration
@needs_root
def test_a_points_access_delay_sets_that_senders_rtt_and_is_restored(netns_testbed):
    tb = netns_testbed(dumbbell_yaml(unique_name("fid"), rate="50mbit", rtt="10ms"))
    base = ping_ms(tb, "s1")
    saved = access_delay.apply(tb, {"delay.s1": "35ms", "policy": "fifo"})
    assert saved == {}
    s1, s2 = ping_ms(tb, "s1"), ping_ms(tb, "s2")
    access_delay.restore(tb, saved)
    after = ping_ms(tb, "s1")
    print(f"\nping s1: {base:.1f} ms, with delay.s1=35ms {s1:.1f} ms (s2 {s2:.1f}), restored {after:.1f}")
    # 10 ms, then 10 + 2 x 35 ms for s1 alone
    assert all(9.7 <= x <= 13 for x in (base, s2, after)) and 79.7 <= s1 <= 83, (base, s1, s2, after)
