"""Every bad input the probe of issue 10 found gives one clear line and a non-zero exit, through
the real CLI (a subprocess), never a traceback: policy errors, overflowing numbers, deep
YAML, bad --duration/--resume/--results, wrong policy_args types, the bounds of finding 4 and
the messages of finding 7. Unexpected errors (bugs) get one line and the path of a log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, dumbbell_yaml, needs_root, one_clear_line, run_cli, unique_name

SCENARIO = "scenario:\n  duration: 2s\n  flows:\n  - {name: a, kind: tcp, src: s1, dst: rx}\n"


# ---------------------------------------------------------------- run-time errors


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    """A real testbed for the `run` errors (all are refused before any traffic). Every test
    that uses it is marked needs_root (conftest): namespaces need root, and CI runs as root."""
    name = unique_name("ce")
    path = tmp_path_factory.mktemp("tb") / "tb.yaml"
    path.write_text(dumbbell_yaml(name, scenario=SCENARIO))
    run_cli("up", str(path), check=True)
    yield name
    run_cli("down", name)


def _run(testbed: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("run", "--testbed", testbed, "--duration", "1", "--results", str(tmp / "res"),
                   *args)


RUN_CASES = [
    (["--policy", "nosuchpolicy"], ["unknown policy 'nosuchpolicy'"]),
    # the shipped models are the default; a checkpoint that is not there is one line
    (["--policy", "aqm-llm:checkpoint=/nonexistent/ck"], ["checkpoint", "/nonexistent/ck"]),
    (["--policy", "aqm-llm-student", "--policy-arg", "checkpoint=/nonexistent/st"],
     ["/nonexistent/st"]),
    (["--policy-arg", "nosuchkey=1"], ["unknown parameter 'nosuchkey'"]),
    (["--policy-arg", "target_ms=abc"], ["target_ms", "abc"]),
    (["--policy-arg", "target_ms=-5"], ["target_ms", "-5"]),
    (["--policy-arg", "target_ms=0"], ["target_ms"]),
    (["--policy-arg", "target_ms=nan"], ["target_ms", "nan"]),
    (["--duration", "inf"], ["--duration", "inf"]),
    (["--duration", "nan"], ["--duration"]),
    (["--resume", "/tmp"], ["--resume", "not a sweep folder"]),
    (["--results", "/proc/nope"], ["--results", "/proc/nope"]),
]


@needs_root
@pytest.mark.parametrize("args,words", RUN_CASES, ids=[" ".join(a) for a, _ in RUN_CASES])
def test_run_errors_are_one_line(testbed, tmp_path, args, words):
    one_clear_line(_run(testbed, tmp_path, *args), *words)


SCENARIO_FILES = [
    ("policy_args: {limit: [1, 2]}\n", ["policy_args", "limit", "[1, 2]"]),
    ("policy: nosuch\n", ["policy", "unknown policy 'nosuch'"]),
    ("policy: dualpi2\npolicy_args: {target_ms: -5}\n", ["policy_args", "target_ms"]),
    ("policy: dualpi2\npolicy_args: {nosuchkey: 1}\n", ["policy_args", "nosuchkey"]),
    ("policy: dualpi2\npolicy_args: {target_ms: .nan}\n", ["policy_args.target_ms", "finite"]),
    ("sweep: {rate: [1e400mbit]}\n", ["sweep.rate[0]", "finite"]),
    ("sweep: {rtt: [1000000s]}\n", ["sweep.rtt[0]", "10s"]),
    ("sweep: {policy: [dualpi2, nosuch]}\n", ["sweep.policy[1]", "unknown policy 'nosuch'"]),
]


@needs_root
@pytest.mark.parametrize("extra,words", SCENARIO_FILES, ids=[e.strip() for e, _ in SCENARIO_FILES])
def test_scenario_file_errors_name_the_file(testbed, tmp_path, extra, words):
    sc = tmp_path / "sc.yaml"
    sc.write_text("duration: 1s\nflows:\n- {name: a, kind: tcp, src: s1, dst: rx}\n" + extra)
    one_clear_line(run_cli("run", "--testbed", testbed, "--scenario", str(sc), "--results",
                           str(tmp_path / "res")), str(sc), *words)
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())


EVALUATE_SPECS = [("nosuch", "unknown policy"), ("dualpi2:target_ms=abc", "abc"),
                  ("dualpi2:target_ms=nan", "finite"), ("dualpi2:nosuchkey=1", "nosuchkey"),
                  ("aqm-llm:checkpoint=/nonexistent/ck", "/nonexistent/ck")]


@needs_root
@pytest.mark.parametrize("spec,word", EVALUATE_SPECS, ids=[s for s, _ in EVALUATE_SPECS])
def test_evaluate_policy_specs(testbed, tmp_path, spec, word):
    """`ParamError` is a user error in evaluate's policy specs, before any run."""
    (tmp_path / "collect.json").write_text('{"points": [], "evaluations": []}')
    one_clear_line(run_cli("evaluate", "--out", str(tmp_path), "--policy", spec, "--testbed",
                           testbed), f"--policy {spec}", word)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["collect.json"]


@needs_root
def test_evaluate_on_a_folder_that_is_no_collection(testbed, tmp_path):
    one_clear_line(run_cli("evaluate", "--out", str(tmp_path), "--testbed", testbed),
                   "not a collection folder")


@needs_root
@pytest.mark.parametrize("line,where", [
    ("behaviours: [dualpi2, nosuch]", "behaviours[1]"),
    ("rate: [10mbit, 1e400mbit]", "rate[1]"),
    ("buffer: [1.5bdp, 1e12p]", "buffer[1]"),
])
def test_collect_matrix_errors_name_the_file(testbed, tmp_path, line, where):
    matrix = tmp_path / "m.yaml"
    text = (ROOT / "scenarios" / "collect.yaml").read_text()
    key = line.split(":")[0]
    lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key}:")]
    matrix.write_text("\n".join(lines) + f"\n{line}\n")
    out = tmp_path / "out"
    one_clear_line(run_cli("collect", "--matrix", str(matrix), "--out", str(out), "--testbed",
                           testbed), str(matrix), where)
    assert not out.exists()


# ---------------------------------------------------------------- spec errors (no root needed)


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tb.yaml"
    path.write_text(text)
    return path


SPEC_CASES = [
    # (substitution in the dumbbell, words the error must hold)
    (("rate: 50mbit", "rate: 1e400mbit"), ["links[2].bottleneck.rate", "finite"]),
    (("rate: 50mbit", "rate: 1bit"), ["links[2].bottleneck.rate", "1kbit to 100gbit"]),
    (("rate: 50mbit", "rate: 1e15bit"), ["links[2].bottleneck.rate", "1kbit to 100gbit"]),
    (("rate: 50mbit", "rate: 50"), ["links[2].bottleneck.rate", "unit", "'50mbit'"]),
    (("rtt: 20ms", "rtt: -5ms"), ["links[2].bottleneck.rtt", "non-negative"]),
    (("rtt: 20ms", "rtt: 1000000000s"), ["links[2].bottleneck.rtt", "0 to 10s"]),
    (("buffer: 1.5bdp", "buffer: 1000000000000"), ["links[2].bottleneck.buffer", "at most"]),
    (("buffer: 1.5bdp", "buffer: 1e12p"), ["links[2].bottleneck.buffer", "at most"]),
    (("buffer: 1.5bdp", "buffer: 1e9bdp"), ["links[2].bottleneck.buffer", "at most"]),
    (("{a: s1, b: r1}", "{a: s1, b: r1, a_addr: 10.0.0.1/0, b_addr: 10.0.0.2/0}"),
     ["links[0].a_addr", "/8 to /30"]),
    (("{a: s1, b: r1}", "{a: s1, b: r1, a_addr: 10.9.0.1/16, b_addr: 10.9.0.2/16}\n"
      "  - {a: s2, b: r3, a_addr: 10.9.3.1/24, b_addr: 10.9.3.2/24}"), ["overlaps"]),
    (("{a: s2, b: r1}", "{a: s2, b: r1}\n  - {a: s1, b: s2}"), ["links[2]", "cycle", "tree"]),
    (("name: zz\n", "name: zz\nname: zz\n"), ["line 2", "duplicate key 'name'"]),
]


@pytest.mark.parametrize("sub,words", SPEC_CASES, ids=[s[1].split("\n")[0] for s, _ in SPEC_CASES])
def test_spec_bounds_are_one_line(tmp_path, sub, words):
    text = dumbbell_yaml("zz").replace(*sub)
    if "r3" in sub[1]:
        text = text.replace("{name: r1, role: router}", "{name: r1, role: router}\n"
                            "  - {name: r3, role: receiver}")
    path = _spec(tmp_path, text)
    for cmd in (["check", str(path)], ["up", str(path)]):
        one_clear_line(run_cli(*cmd), str(path), *words)


def test_deep_yaml_and_non_finite_numbers(tmp_path):
    deep = _spec(tmp_path, "a: " + "[" * 20000 + "]" * 20000 + "\n")
    one_clear_line(run_cli("check", str(deep)), str(deep), "nested")
    nan = _spec(tmp_path, dumbbell_yaml("zz").replace("name: s1, role: sender",
                                                      "name: s1, role: sender, x: .inf"))
    one_clear_line(run_cli("check", str(nan)), "hosts[0].x", "finite")


def test_rtt_zero_means_no_added_delay(tmp_path):
    """rtt: 0ms is valid and documented: no added delay, and said so (not 'delay by nfqueue')."""
    res = run_cli("check", str(_spec(tmp_path, dumbbell_yaml("zz", rtt="0ms"))))
    assert res.returncode == 0 and "RTT 0 ms" in res.stdout, res.stderr
    from orchestrator.commands.view import delay_words

    assert delay_words(0.0, "nfqueue") == "no added delay"


def test_check_accepts_the_shipped_testbeds():
    for f in ("testbeds/mininet-like.yaml", "testbeds/eight-senders.yaml"):
        res = run_cli("check", f)
        assert res.returncode == 0 and ": ok:" in res.stdout, res.stderr


# ---------------------------------------------------------------- the last-resort handler


def _crashing(tmp_path: Path, debug: bool) -> subprocess.CompletedProcess:
    """main() with a command that has a bug (a ZeroDivisionError): as a user and as a test."""
    code = ("import click, sys\nfrom orchestrator import cli\n"
            "@cli.cli.command()\ndef boom():\n    1 / 0\n"
            "sys.argv = ['testbed', 'boom']\ncli.main()\n")
    env = {**os.environ, "TESTBED_LOG_DIR": str(tmp_path / "logs")}
    env.pop("TESTBED_DEBUG", None)
    if debug:
        env["TESTBED_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=60)


def test_a_bug_is_one_line_and_a_log(tmp_path):
    line = one_clear_line(_crashing(tmp_path, debug=False), "internal error", "ZeroDivisionError")
    log = Path(line.split("full log: ")[1].split(" ")[0])
    assert log.parent == tmp_path / "logs"
    assert "Traceback" in log.read_text() and "in boom" in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_debug_env_shows_the_traceback(tmp_path):
    res = _crashing(tmp_path, debug=True)
    assert res.returncode != 0 and "Traceback" in res.stderr and "ZeroDivisionError" in res.stderr


def test_help_of_every_run_option():
    res = run_cli("run", "--help")
    assert "--results" in res.stdout
    after = res.stdout.split("--results", 1)[1].split("\n  -", 1)[0]
    assert "Folder" in after, after


@needs_root
def test_run_time_scenario_errors_name_the_file(testbed, tmp_path):
    sc = tmp_path / "sc.yaml"
    sc.write_text("duration: 1s\nflows:\n- {name: a, kind: tcp, src: s1, dst: rx}\n")
    one_clear_line(run_cli("run", "--testbed", testbed, "--scenario", str(sc), "--policy", "codel",
                           "--datapath", "ebpf", "--results", str(tmp_path / "res")),
                   str(sc), "codel", "ebpf")
