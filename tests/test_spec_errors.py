"""Bad testbed files get one clear line naming the file, the key path and what was expected."""

from __future__ import annotations

import pytest

from conftest import dumbbell_yaml, run_cli

GOOD = dumbbell_yaml("bad")

CASES = {
    "missing key": (GOOD.replace("  - {name: r1, role: router}\n", "  - {role: router}\n"),
                    "hosts[2].name", "required key is missing"),
    "wrong type": (GOOD.replace("rate: 50mbit", "rate: {x: 1}"), "links[2].bottleneck.rate",
                   "valid string"),
    "negative rate": (GOOD.replace("rate: 50mbit", "rate: -5mbit"), "links[2].bottleneck.rate",
                      "like '50mbit'"),
    "rate without unit": (GOOD.replace("rate: 50mbit", "rate: '50'"), "links[2].bottleneck.rate",
                          "unit"),
    "unknown host in link": (GOOD.replace("{a: s2, b: r1}", "{a: s9, b: r1}"), "links[1].a",
                             "unknown host 's9'"),
    "duplicate names": (GOOD.replace("name: s2,", "name: s1,"), "hosts[1].name",
                        "duplicate host name 's1'"),
    "unsafe interface name": (GOOD.replace("name: s2,", "name: 's2;rm',"), "hosts[1].name",
                              "lowercase letters and digits"),
    "too long name": (GOOD.replace("name: s2,", "name: averyveryverylongname,"), "hosts[1].name",
                      "1-10 lowercase"),
    "unknown role": (GOOD.replace("role: router", "role: switch"), "hosts[2].role", "'router'"),
    "unknown key": (GOOD.replace("buffer: 1.5bdp", "buffer: 1.5bdp, jitter: 1ms"),
                    "links[2].bottleneck.jitter", "unknown key"),
    "no bottleneck": (GOOD.replace(", bottleneck: {rate: 50mbit, rtt: 20ms, buffer: 1.5bdp}", ""),
                      "links", "exactly one link with a 'bottleneck'"),
    "bad buffer": (GOOD.replace("buffer: 1.5bdp", "buffer: lots"), "links[2].bottleneck.buffer",
                   "expected a buffer like"),
    "bad testbed name": (GOOD.replace("name: bad", "name: Bad-Name!"), "name", "testbed name"),
    "bottleneck not at a router": (GOOD.replace("{a: r1, b: rx, bottleneck", "{a: rx, b: r1, bottleneck"),
                                   "links[2].a", "must be a router"),
    "disconnected host": (GOOD.replace("  - {name: rx, role: receiver}\n",
                                       "  - {name: rx, role: receiver}\n  - {name: z, role: sender}\n"),
                          "links", "not connected"),
    "bad cidr": (GOOD.replace("{a: s1, b: r1}", "{a: s1, b: r1, a_addr: 10.0.0.300/24, b_addr: 10.0.0.2/24}"),
                 "links[0].a_addr", "IPv4 address"),
    "not yaml": ("name: [unclosed\n", "line", "not valid YAML"),
    "not a mapping": ("- just\n- a list\n", "", "expected a mapping"),
    "flow to unknown host": (GOOD + "scenario:\n  flows:\n    - {name: f, kind: tcp, src: s1, dst: nope}\n",
                             "scenario.flows[0].dst", "unknown host 'nope'"),
    "udp flow without rate": (GOOD + "scenario:\n  flows:\n    - {name: f, kind: udp, src: s1, dst: rx}\n",
                              "scenario.flows[0]", "needs a 'rate'"),
    "unknown flow kind": (GOOD + "scenario:\n  flows:\n    - {name: f, kind: quic, src: s1, dst: rx}\n",
                          "scenario.flows[0].kind", "'tcp'"),
    "bad sweep value": (GOOD + "scenario:\n  flows:\n    - {name: f, kind: tcp, src: s1, dst: rx}\n"
                        "  sweep: {rate: [10mbit, fast]}\n", "scenario.sweep.rate[1]", "unit"),
    "unknown sweep key": (GOOD + "scenario:\n  flows:\n    - {name: f, kind: tcp, src: s1, dst: rx}\n"
                          "  sweep: {colour: [red]}\n", "scenario.sweep.colour", "unknown sweep key"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_is_one_clear_line(case, tmp_path):
    text, key, expected = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    res = run_cli("up", str(path))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    line = res.stderr.strip()
    assert line.count("\n") == 0, line
    assert line.startswith(f"error: {path}"), line
    assert key in line, line
    assert expected in line, line


def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_text(GOOD)
    path.chmod(0)
    missing = run_cli("up", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr
    directory = run_cli("up", str(tmp_path))
    assert directory.returncode != 0 and "Traceback" not in directory.stderr


def test_good_spec_parses_to_expected_numbers():
    from orchestrator.spec import schema as specmod

    spec = specmod.parse(GOOD, "good.yaml")
    bn = spec.bottleneck
    assert bn.rate_bps == 50e6
    assert bn.rtt_s == pytest.approx(0.020)
    assert bn.buffer_bytes() == 187500  # 1.5 x 50 Mbit/s x 20 ms
    assert bn.buffer_pkts() == 125
    assert bn.forward_s == 0 and bn.reverse_s == pytest.approx(0.020)


def test_shipped_testbeds_are_valid():
    from pathlib import Path

    from orchestrator.spec import schema as specmod

    files = sorted(Path(__file__).resolve().parent.parent.glob("testbeds/*.yaml"))
    assert len(files) >= 2
    for f in files:
        spec = specmod.load(f)
        assert spec.scenario is not None and spec.scenario.flows


@pytest.mark.parametrize("where", ["host", "settings"])
@pytest.mark.parametrize("key,value,words", [("user", "Bad User", "user name like 'root'"),
                                             ("port", 0, "port between 1 and 65535"),
                                             ("port", 65536, "port between 1 and 65535")])
def test_ssh_user_and_port_are_checked_in_both_places(where, key, value, words):
    """A host's own ssh settings and the top-level ones share one check each."""
    from pydantic import ValidationError

    from orchestrator.spec.ssh import SshHost, SshSettings

    cls, base = (SshHost, {"address": "10.0.0.1"}) if where == "host" else (SshSettings, {})
    with pytest.raises(ValidationError, match=words):
        cls(**base, **{key: value})
    cls(**base, **{key: "root" if key == "user" else 22})  # a good value passes
