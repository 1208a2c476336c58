"""A shared machine (issue 10, findings 3, 5, 6, 7): `down` touches only testbeds this tool's
state knows, two `up` of one name cannot destroy each other, every JSON file a run writes is
strict JSON, a kill -9'd run is marked aborted by `analyze`, SIGTERM exits 143, and state,
results and bpffs are not open to every user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, dumbbell_yaml, needs_root, unique_name

pytestmark = needs_root


def cli(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "TESTBED_STATE_DIR": str(state)}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def spawn(state: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "TESTBED_STATE_DIR": str(state)}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def namespaces(name: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {ln.split()[0] for ln in out.splitlines() if ln.startswith(f"tb-{name}-")}


def strict(path: Path) -> object:
    def refuse(c: str) -> object:
        raise ValueError(f"{path}: not strict JSON: {c}")
    return json.loads(path.read_text(), parse_constant=refuse)


# Runs in a mount namespace of its own with an empty /run/netns, so the namespaces it sees
# are only the ones it makes: if `down --all` ever again removed every `tb-*` namespace, this
# test fails without removing anyone else's testbed from the machine.
ISOLATED = """
import json, os, subprocess, sys
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
os.makedirs("/run/netns", exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/netns"], check=True)
tmp, mine, theirs = sys.argv[1:4]
def cli(root, *args):
    env = {**os.environ, "TESTBED_STATE_DIR": os.path.join(tmp, root)}
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                       text=True, env=env, timeout=120)
    return {"rc": r.returncode, "out": r.stdout, "err": r.stderr}
def ns(name):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return sorted(l.split()[0] for l in out.splitlines() if l.startswith(f"tb-{name}-"))
steps = {"up_mine": cli("a", "up", os.path.join(tmp, mine + ".yaml")),
         "up_theirs": cli("b", "up", os.path.join(tmp, theirs + ".yaml"))}
steps["theirs_before"] = ns(theirs)
steps["down_all"] = cli("a", "down", "--all")
steps["mine_after"], steps["theirs_after_all"] = ns(mine), ns(theirs)
steps["down_nameless"] = cli("a", "down")
steps["theirs_after_nameless"] = ns(theirs)
cli("a", "down", mine)
cli("b", "down", theirs)
print(json.dumps(steps))
"""


def test_down_all_and_nameless_down_leave_unknown_testbeds(tmp_path):
    """`mine` is known to state root a, `theirs` only to state root b (another user's
    checkout): `down --all` and a nameless `down` from a leave `theirs` alone."""
    mine, theirs = unique_name("mn"), unique_name("th")
    for name in (mine, theirs):
        (tmp_path / f"{name}.yaml").write_text(dumbbell_yaml(name))
    res = subprocess.run(["unshare", "--mount", "--", sys.executable, "-c", ISOLATED,
                          str(tmp_path), mine, theirs], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    steps = json.loads(res.stdout)
    assert steps["up_mine"]["rc"] == 0 and steps["up_theirs"]["rc"] == 0, steps
    assert len(steps["theirs_before"]) == 4
    down_all = steps["down_all"]
    assert down_all["rc"] == 0 and mine in down_all["out"] and theirs not in down_all["out"], steps
    assert steps["mine_after"] == []
    assert steps["theirs_after_all"] == steps["theirs_before"]
    # nothing known to a any more: a nameless down removes nothing, and names what it saw
    nameless = steps["down_nameless"]
    assert nameless["rc"] == 0 and "nothing to do" in nameless["out"], nameless
    assert theirs in nameless["out"]
    assert steps["theirs_after_nameless"] == steps["theirs_before"]


def test_nameless_down_with_two_up_names_the_option(tmp_path):
    names = [unique_name("nd"), unique_name("nd")]
    try:
        for n in names:
            spec = tmp_path / f"{n}.yaml"
            spec.write_text(dumbbell_yaml(n))
            assert cli(tmp_path / "st", "up", str(spec)).returncode == 0
        res = cli(tmp_path / "st", "down")
        assert res.returncode != 0 and "several testbeds" in res.stderr and "--all" in res.stderr
        assert all(len(namespaces(n)) == 4 for n in names)
        res = cli(tmp_path / "st", "run", "--duration", "1")
        assert res.returncode != 0 and "--testbed NAME" in res.stderr, res.stderr
    finally:
        for n in names:
            cli(tmp_path / "st", "down", n)


def test_two_simultaneous_up_of_one_file(tmp_path):
    """The loser fails at once; the winner's namespaces stay (3 tries, as the probe did)."""
    for _ in range(3):
        name = unique_name("lk")
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(dumbbell_yaml(name, senders=6))
        try:
            procs = [spawn(tmp_path / "st", "up", str(spec)) for _ in range(2)]
            results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
            codes = sorted(r[0] for r in results)
            assert codes == [0, 2], results
            loser = next(r for r in results if r[0] == 2)
            assert "Traceback" not in loser[2]
            assert "being built by another" in loser[2] or "already up" in loser[2], loser[2]
            assert len(namespaces(name)) == 8
        finally:
            cli(tmp_path / "st", "down", name)


def test_up_waits_for_nobody_while_the_name_is_locked(tmp_path):
    """While one `up` of a name holds its lock (between its "already up?" check and its first
    state save lies a race), another `up` of it fails at once and builds nothing, so its
    rollback cannot remove the first one's namespaces."""
    name = unique_name("lk")
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(dumbbell_yaml(name))
    state = tmp_path / "st"
    env = {**os.environ, "TESTBED_STATE_DIR": str(state)}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom orchestrator import providers\n"
         f"with providers.up_lock({name!r}):\n    print('held', flush=True)\n    time.sleep(30)"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = cli(state, "up", str(spec))
        assert res.returncode == 2 and "being built by another" in res.stderr, res.stderr
        assert not namespaces(name)
    finally:
        holder.kill()
        holder.wait()
        cli(state, "down", name)
    # the kernel dropped the dead holder's lock: the name is free again
    res = cli(state, "up", str(spec))
    assert res.returncode == 0, res.stderr
    # progress on stderr, one line per phase (a 200-host `up` was silent for 111 s)
    assert "building testbed" in res.stderr and "addresses and routes" in res.stderr
    cli(state, "down", name)


SCENARIO = ("scenario:\n  duration: 30s\n  flows:\n  - {name: a, kind: tcp, src: s1, dst: rx}\n"
            "  - {name: b, kind: l4s, src: s2, dst: rx}\n")


@pytest.fixture
def testbed(tmp_path):
    name = unique_name("sj")
    spec = tmp_path / "tb.yaml"
    spec.write_text(dumbbell_yaml(name, scenario=SCENARIO))
    assert cli(tmp_path / "st", "up", str(spec)).returncode == 0
    yield tmp_path / "st", name
    cli(tmp_path / "st", "down", name)


def _wait_running(results: Path, timeout: float = 60) -> Path:
    end = time.time() + timeout
    while time.time() < end:
        for m in results.glob("*/manifest.json"):
            try:
                if json.loads(m.read_text()).get("status") == "running":
                    return m
            except ValueError:
                pass
        time.sleep(0.3)
    raise AssertionError("the run never started")


def test_strict_json_kill9_analyze_and_modes(testbed, tmp_path):
    state, name = testbed
    res_root = tmp_path / "res"
    done = cli(state, "run", "--testbed", name, "--duration", "2", "--results", str(res_root))
    assert done.returncode == 0, done.stderr
    # every JSON file the run wrote parses with a strict parser (nfqueue limits had Infinity)
    files = list(res_root.rglob("*.json"))
    assert any(f.name == "manifest.json" for f in files) and len(files) >= 3
    for f in files:
        strict(f)
        assert f.stat().st_mode & 0o007 == 0, f  # not world-readable
    assert (state / name / "state.json").stat().st_mode & 0o777 == 0o600
    _report_is_readable(next(res_root.glob("*/report.html")), name)
    assert (state / name).stat().st_mode & 0o777 == 0o700

    # kill -9 in the middle of a run: analyze marks it aborted, and strict JSON still holds
    killed_root = tmp_path / "killed"
    proc = spawn(state, "run", "--testbed", name, "--results", str(killed_root))
    manifest = _wait_running(killed_root)
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    res = cli(state, "analyze", str(manifest.parent))
    assert "Traceback" not in res.stderr, res.stderr
    assert json.loads(manifest.read_text())["status"] == "aborted"
    for f in manifest.parent.rglob("*.json"):
        # a tool killed before its end (iperf3 writes its JSON once, at exit) left an empty
        # stdout log: that is "no report", which the flow's record says, not malformed JSON
        if f.parent.name == "logs" and f.stat().st_size == 0:
            continue
        strict(f)


def _report_is_readable(report: Path, testbed: str) -> None:
    """Finding 9: the setup first, labels with units instead of raw keys, a flows table that
    scrolls inside the page instead of widening it."""
    page = report.read_text()
    body = page.split("<h3>Manifest</h3>")[0]  # the raw manifest, folded, comes last
    assert body.index("<h3>Setup</h3>") < body.index("<h3>Results</h3>") < body.index("<h3>Flows")
    setup = body.split("<h3>Setup</h3>")[1].split("<h3>Results</h3>")[0]
    for words in (testbed, "50 Mbit/s", "base RTT 20 ms", "packets", "a: tcp", "dualpi2"):
        assert words in setup, (words, setup)
    for raw in ("duration_s", "ecn_counts", "goodput_mbps", "link_rate_mbps", "rtt_ms_p50"):
        assert raw not in body, raw
    for label in ("Link utilisation (0-1)", "Goodput (Mbit/s)", "RTT median (ms)",
                  "Queue delay per traffic class (ms)"):
        assert label in body, label
    flows = body.split("<h3>Flows</h3>")[1]
    assert flows.startswith("<div class='wide'>") and ".wide{overflow-x:auto" in page


def test_sigterm_exits_143(testbed, tmp_path):
    state, name = testbed
    proc = spawn(state, "run", "--testbed", name, "--results", str(tmp_path / "res"))
    manifest = _wait_running(tmp_path / "res")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, proc.communicate()
    assert json.loads(manifest.read_text())["status"] == "aborted"


def test_bpffs_is_not_world_writable(testbed):
    state, name = testbed
    code = ("from orchestrator import providers; import os, sys\n"
            f"p = providers.load({name!r}).bpffs(); print(oct(os.stat(p).st_mode & 0o777))")
    env = {**os.environ, "TESTBED_STATE_DIR": str(state)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=60)
    assert out.stdout.strip() == "0o700", out.stderr


def test_analyze_refuses_a_folder_that_is_not_a_run(tmp_path):
    folder = tmp_path / "notarun"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    res = cli(tmp_path / "st", "analyze", str(folder))
    assert res.returncode != 0 and "not a run folder" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
