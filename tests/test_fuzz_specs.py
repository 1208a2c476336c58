"""Fuzz (issue 10, acceptance): a seeded corpus of a few hundred malformed testbed and scenario
files through the CLI. Each must exit non-zero with one line that names the file, print no
traceback and leave nothing behind. Most go through `testbed check` in this process (main()
itself, with its handlers: fast); a sample goes through `up` and `run` in subprocesses on
real namespaces."""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, dumbbell_yaml, needs_root, unique_name

SEED = 20261203
N_TESTBED, N_SCENARIO = 240, 120

BAD_NAMES = ["", "UPPER", "../x", "a" * 11, 5, None, [1], "a b", "-rf", "x/y", "1abc"]
BAD_RATES = ["0mbit", "-5mbit", "1bit", "1e15bit", "1e400mbit", "50", 50, "50 parsecs",
             "inf mbit", float("inf"), float("nan"), True, "", [50], {"v": 1}]
BAD_TIMES = ["-5ms", "1e400ms", "100s", 20, "20 parsec", "nanms", "", True, float("nan"), [1]]
BAD_BUFFERS = [0, -1, 10**12, "1e12p", "1e9bdp", "abc", True, 1.5, [1], "0kb", "-3p",
               float("inf")]
BAD_ADDRS = ["10.0.0.1", "10.0.0.1/0", "300.1.1.1/24", "10.0.0.1/31", 5, "10.0.0.1/4", "::1/64"]


def _base() -> dict[str, Any]:
    return yaml.safe_load(dumbbell_yaml("fz", scenario=(
        "scenario:\n  duration: 5s\n  flows:\n  - {name: a, kind: tcp, src: s1, dst: rx}\n"
        "  - {name: b, kind: udp, src: s2, dst: rx, rate: 5mbit}\n")))


def _bn(d: dict[str, Any]) -> dict[str, Any]:
    return d["links"][-1]["bottleneck"]


# each mutation makes a valid testbed file invalid in one way
def _testbed_mutations(r: random.Random) -> list[Callable[[dict[str, Any]], None]]:
    def host(d: dict[str, Any]) -> dict[str, Any]:
        return r.choice(d["hosts"])

    def link(d: dict[str, Any]) -> dict[str, Any]:
        return r.choice(d["links"])

    return [
        lambda d: d.update(name=r.choice(BAD_NAMES)),
        lambda d: d.update(hosts=r.choice([[], None, "x", {}, 3])),
        lambda d: d.update(links=r.choice([[], None, "x", {}, [{}]])),
        lambda d: d.pop(r.choice(["name", "hosts", "links"])),
        lambda d: d.update({r.choice(["nme", "host", "link", "extra"]): 1}),
        lambda d: host(d).update(name=r.choice(BAD_NAMES)),
        lambda d: host(d).update(name=d["hosts"][0]["name"]) if host(d) is not d["hosts"][0]
        else d["hosts"][1].update(name=d["hosts"][0]["name"]),
        lambda d: host(d).update(role=r.choice(["switch", 1, None, ""])),
        lambda d: host(d).update(tcp={"cc": r.choice(["-rf", "a b", 3, "CUBIC"])}),
        lambda d: host(d).update(tcp={"ecn": r.choice([3, -1, "x", float("nan")])}),
        lambda d: host(d).update(ssh={"address": "h"}),
        lambda d: link(d).update({r.choice("ab"): r.choice(["nosuch", 1, None])}),
        lambda d: link(d).update(a_addr=r.choice(BAD_ADDRS), b_addr="10.0.0.2/24"),
        lambda d: link(d).update(a_addr="10.0.0.1/24"),
        lambda d: link(d).update(delay=r.choice(BAD_TIMES + ["11s"])),
        lambda d: (lk := link(d)).update(b=lk["a"]),
        lambda d: _bn(d).update(rate=r.choice(BAD_RATES)),
        lambda d: _bn(d).update(rtt=r.choice(BAD_TIMES)),
        lambda d: _bn(d).update(buffer=r.choice(BAD_BUFFERS)),
        lambda d: _bn(d).update(delay_mode=r.choice(["slow", 1, None])),
        lambda d: _bn(d).update(delay={"forward": "5ms"}),
        lambda d: _bn(d).pop("rate"),
        lambda d: _bn(d).update(speed="1mbit"),
        lambda d: d["links"][0].update(bottleneck={"rate": "10mbit"}),
        lambda d: d["links"][-1].pop("bottleneck"),
        lambda d: d["links"][-1].update(a="rx", b="r1"),
        lambda d: d["links"].append({"a": "s1", "b": "s2"}),  # a cycle
        lambda d: d["hosts"].append({"name": "lone", "role": "sender"}),  # not connected
        lambda d: d.update(provider=r.choice(["docker", 1])),
        lambda d: d.update(hosts=[h for h in d["hosts"] if h["role"] != "router"]),
    ]


def _scenario_mutations(r: random.Random) -> list[Callable[[dict[str, Any]], None]]:
    def flow(d: dict[str, Any]) -> dict[str, Any]:
        return r.choice(d["flows"])

    return [
        lambda d: d.update(duration=r.choice(["0s", "-1s", "inf", "1e9s", 10, "", "10 parsec"])),
        lambda d: d.update(flows=r.choice([[], None, "x", {}])),
        lambda d: d.pop("flows"),
        lambda d: d.update(colour="red"),
        lambda d: flow(d).update(kind=r.choice(["quic", 1, None])),
        lambda d: flow(d).update(src=r.choice(["r1", "nosuch", 5])),
        lambda d: (f := flow(d)).update(dst=f["src"]),
        lambda d: flow(d).update(name=r.choice(["", "UP", 5, "a" * 40])),
        lambda d: flow(d).update(start=r.choice(["100s", "-1s", "1e400s", 5])),
        lambda d: flow(d).update(rate=r.choice(BAD_RATES)),
        lambda d: flow(d).update(size=r.choice(["0kb", "-1mb", "lots", 5])),
        lambda d: flow(d).update(packet_size=r.choice([0, 1, 9000, "x", 1.5])),
        lambda d: flow(d).update(ecn=r.choice(["ect2", 1])),
        lambda d: d["flows"].append(dict(d["flows"][0])),  # duplicate flow name
        lambda d: d["flows"].append({"name": "u", "kind": "udp", "src": "s1", "dst": "rx"}),
        lambda d: d.update(policy=r.choice(["nosuch", 5, "UPPER"])),
        lambda d: d.update(policy="dualpi2", policy_args=r.choice([
            {"target_ms": -5}, {"target_ms": 0}, {"nosuchkey": 1}, {"target_ms": "abc"},
            {"target_ms": float("nan")}, {"limit": 1.5}])),
        lambda d: d.update(policy_args=r.choice([{"limit": [1, 2]}, {"limit": {"a": 1}}, [1], "x"])),
        lambda d: d.update(sweep=r.choice([{"rate": []}, {"colour": [1]}, {"rate": ["1e400mbit"]},
                                           {"rtt": ["-1ms"]}, {"buffer": [0]}, {"policy": ["A B"]},
                                           {"rate": "10mbit"}])),
        lambda d: d.update(datapath=5),
    ]


def _text_mutations(r: random.Random, text: str) -> str:
    """Mutations of the text itself: the YAML layer."""
    kind = r.randrange(7)
    if kind == 0:  # a duplicated key
        return text.replace("links:", "links: []\nlinks:", 1) if r.random() < 0.5 else \
            text.replace("name: fz\n", "name: fz\nname: fy\n", 1)
    if kind == 1:  # deep nesting
        depth = r.choice([60, 500, 20000])
        return text + "deep: " + "[" * depth + "]" * depth + "\n"
    if kind == 2:  # not YAML
        return text.replace("hosts:", "hosts: [", 1)
    if kind == 3:  # cut before the bottleneck link is complete
        return text[: r.randrange(0, text.index("bottleneck"))]
    if kind == 4:  # a top level that is not a mapping
        return r.choice(["", "- a\n- b\n", "42\n", "null\n", "'just text'\n"])
    if kind == 5:  # tabs for indentation
        return text.replace("\n  - ", "\n\t- ", 1)
    return text.replace("rate: 50mbit", r.choice(["rate: .inf", "rate: .nan", "rate: -.inf"]))


def corpus() -> Iterator[tuple[str, str, str | None]]:
    """(case id, testbed text, scenario text or None), seeded: the same corpus every run."""
    r = random.Random(SEED)
    tb_muts, sc_muts = _testbed_mutations(r), _scenario_mutations(r)
    base = _base()
    for i in range(N_TESTBED):
        if i % 4 == 3:
            text = _text_mutations(r, dumbbell_yaml("fz"))
            yield f"tb{i}-text", text, None
            continue
        d = copy.deepcopy(base)
        for _ in range(r.choice([1, 1, 1, 2])):
            try:
                r.choice(tb_muts)(d)
            except (KeyError, TypeError, AttributeError, IndexError):
                pass  # an earlier mutation removed what this one changes: still invalid
        if d == base:
            d["name"] = "UPPER"
        yield f"tb{i}", yaml.safe_dump(d, sort_keys=False), None
    for i in range(N_SCENARIO):
        sc = copy.deepcopy(base["scenario"])
        r.choice(sc_muts)(sc)
        if sc == base["scenario"]:
            sc["colour"] = "red"
        tb = copy.deepcopy(base)
        tb.pop("scenario")
        yield f"sc{i}", yaml.safe_dump(tb, sort_keys=False), yaml.safe_dump(sc, sort_keys=False)


CASES = list(corpus())


def _files(tmp: Path, case: tuple[str, str, str | None]) -> tuple[Path, Path | None]:
    _, tb_text, sc_text = case
    tb = tmp / "testbed.yaml"
    tb.write_bytes(tb_text.encode()) if tb_text else tb.write_text("")
    sc = None
    if sc_text is not None:
        sc = tmp / "scenario.yaml"
        sc.write_text(sc_text)
    return tb, sc


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The CLI's main() in this process, as a user runs it: its handlers, not click's runner."""
    from orchestrator import cli

    old = sys.argv
    sys.argv = ["testbed", *argv]
    os.environ.pop("TESTBED_DEBUG", None)
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_one_line(code: int, out: str, err: str, named: Path) -> None:
    assert code != 0, out
    assert "Traceback" not in err + out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and str(named) in lines[0], lines[0]


def test_corpus_is_large_and_seeded():
    assert len(CASES) >= 300
    assert [c[0] for c in corpus()] == [c[0] for c in CASES]
    assert list(corpus())[5][1] == CASES[5][1]


def test_every_malformed_file_through_check(tmp_path, capsys):
    """Every case of the corpus through `testbed check FILE [--scenario FILE]`."""
    failures = []
    for case in CASES:
        folder = tmp_path / case[0]
        folder.mkdir()
        tb, sc = _files(folder, case)
        argv = ["check", str(tb)] + (["--scenario", str(sc)] if sc else [])
        code, out, err = _main(argv, capsys)
        try:
            _assert_one_line(code, out, err, sc or tb)
            # nothing left behind: the folder holds only the files written
            assert sorted(p.name for p in folder.iterdir()) == sorted(
                p.name for p in (tb, sc) if p is not None)
        except AssertionError as e:
            failures.append(f"{case[0]}: {e}\n--- testbed\n{case[1][:400]}\n--- scenario\n{case[2]}")
    assert not failures, f"{len(failures)} of {len(CASES)} failed:\n" + "\n".join(failures[:5])


def _namespaces(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln.startswith(f"tb-{name}-")]


@needs_root
def test_sample_through_up_and_run(tmp_path):
    """A sample through the real `up` (subprocess, own state root) and `run` (on a real
    testbed): same answer, and no namespace, state or results left behind."""
    state = tmp_path / "state"
    env = {**os.environ, "TESTBED_STATE_DIR": str(state)}
    env.pop("TESTBED_DEBUG", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                              text=True, timeout=120, cwd=ROOT, env=env)

    r = random.Random(SEED)
    tb_cases = r.sample([c for c in CASES if c[2] is None], 12)
    for case in tb_cases:
        folder = tmp_path / case[0]
        folder.mkdir()
        tb, _ = _files(folder, case)
        res = cli("up", str(tb))
        _assert_one_line(res.returncode, res.stdout, res.stderr, tb)
        assert not _namespaces("fz"), case[0]
        assert not state.exists() or not [p for p in state.iterdir() if p.is_dir()], case[0]

    name = unique_name("fz")
    good = tmp_path / "good.yaml"
    good.write_text(dumbbell_yaml(name))
    assert cli("up", str(good)).returncode == 0
    try:
        results = tmp_path / "results"
        for case in r.sample([c for c in CASES if c[2] is not None], 8):
            folder = tmp_path / case[0]
            folder.mkdir()
            _, sc = _files(folder, case)
            assert sc is not None
            res = cli("run", "--testbed", name, "--scenario", str(sc), "--results", str(results))
            _assert_one_line(res.returncode, res.stdout, res.stderr, sc)
            assert not results.exists() or not any(results.iterdir()), case[0]
    finally:
        cli("down", name)
    assert not _namespaces(name)
