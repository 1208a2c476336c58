"""`testbed down` after a kill -9 of `up` and of `run`, at moments chosen by what exists (the
state file, the namespaces, a registered BPF congestion control, BPF pins), not by a timer
that may fire before the CLI has even started."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, TESTBED, dumbbell_yaml, needs_root, run_cli, unique_name
from test_netns_integration import leftovers

pytestmark = [needs_root, pytest.mark.integration, pytest.mark.slow]

STATE = Path("/run/testbed")


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _namespaces(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"tb-{name}-")]


def _state(name: str) -> dict:
    try:
        return json.loads((STATE / name / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _struct_ops(name: str) -> list[str]:
    out = subprocess.run(["bpftool", "struct_ops", "list"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"l4s_{name}"[:15] in line]


def _root_snapshot() -> dict[str, str]:
    """What a testbed must never change in the root namespace."""
    rules = subprocess.run(["ip", "rule", "show"], capture_output=True, text=True).stdout
    ipt = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    ipt = "\n".join(line for line in ipt.splitlines() if not line.startswith(("#", ":")))
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {"rules": rules, "iptables": ipt, "links": "\n".join(sorted(
        line.split(":")[1].strip().split("@")[0] for line in links.splitlines()))}


def _kill_up_when(path: Path, name: str, cond, what: str) -> None:
    proc = subprocess.Popen([*TESTBED, "up", str(path)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: cond() or proc.poll() is not None, 60, what)
        assert proc.poll() is None, f"`up` finished before {what}: kill came too late to test anything"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("stage", ["state-and-one-namespace", "all-namespaces", "delay-line"])
def test_kill9_during_up_then_down_leaves_nothing(tmp_path, stage):
    name = unique_name("k9")
    text = (ROOT / "testbeds/eight-senders.yaml").read_text().replace("name: eight", f"name: {name}")
    path = tmp_path / "big.yaml"
    path.write_text(text)
    hosts = text.count("role:")
    before = _root_snapshot()
    cond = {
        "state-and-one-namespace": lambda: (STATE / name / "state.json").exists() and _namespaces(name),
        "all-namespaces": lambda: len(_namespaces(name)) == hosts,
        "delay-line": lambda: any(p.get("tag") == "delayline" for p in _state(name).get("processes", [])),
    }[stage]
    _kill_up_when(path, name, cond, stage)
    res = run_cli("down", name)
    assert res.returncode == 0, res.stderr
    assert leftovers(name) == []
    assert _root_snapshot() == before


@pytest.mark.parametrize("datapath", ["ebpf", "nfqueue"])
def test_kill9_during_run_then_down_leaves_nothing(tmp_path, datapath):
    name = unique_name("kr")
    scenario = ("scenario:\n  duration: 20s\n  flows:\n"
                "    - {name: l4s, kind: l4s, src: s1, dst: rx}\n"
                "    - {name: cubic, kind: tcp, src: s2, dst: rx, cc: cubic}\n")
    path = tmp_path / "tb.yaml"
    path.write_text(dumbbell_yaml(name, scenario=scenario))
    before = _root_snapshot()
    run_cli("up", str(path), check=True)
    try:
        proc = subprocess.Popen([*TESTBED, "run", "--testbed", name, "--policy", "dualpi2", "--datapath",
                                 datapath, "--results", str(tmp_path / "results")],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def mid_traffic() -> bool:
            tags = [p.get("tag", "") for p in _state(name).get("processes", [])]
            return bool(_struct_ops(name)) and any("iperf3" in t or "sender" in t or "l4s" in t
                                                   for t in tags)
        try:
            _wait_for(lambda: mid_traffic() or proc.poll() is not None, 60, "traffic")
            assert proc.poll() is None, "run finished before the kill"
            time.sleep(1.0)  # well inside the 20 s of traffic
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert _struct_ops(name), "the kill must leave a registered BPF CC for down to remove"
    finally:
        res = run_cli("down", name)
    assert res.returncode == 0, res.stderr
    assert leftovers(name) == []
    assert _struct_ops(name) == []
    assert not (STATE / name).exists()
    assert _root_snapshot() == before
    pins = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    assert f"tb_{name}" not in pins
