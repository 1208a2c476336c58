"""A testbed name never becomes a path outside the state root, and `down` never signals a
process that is not the testbed's own (issue: security of names from the command line)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, needs_root

ESCAPES = ["../victim", "../../victim", "..", ".", "a/b", "/tmp", "x\n", "Upper", "-rf", ""]


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TESTBED_STATE_DIR": str(state)}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def _plant(folder: Path, name: str, pid: int, start: int | None = None, mount: str = "") -> None:
    """A state file that lists someone else's process (as an attacker or a stale file would)."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = {"host": "s1", "pid": pid, "argv": ["sleep"], "tag": "x"}
    if start is not None:
        proc["start"] = start
    (folder / "state.json").write_text(json.dumps({
        "name": name, "provider": "netns", "status": "up", "spec": {}, "hosts": {},
        "bottleneck": {}, "processes": [proc],
        "cleanups": [{"kind": "mount", "value": mount}] if mount else [], "extra": {}}))


@pytest.fixture
def layout(tmp_path):
    state = tmp_path / "root" / "state"
    state.mkdir(parents=True)
    victim = tmp_path / "root" / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    return state, victim


@pytest.mark.parametrize("cmd", [["down"], ["status"]])
def test_traversal_names_are_refused(layout, cmd):
    state, victim = layout
    for bad in ESCAPES:
        res = _cli(state, *cmd, "--", bad)
        assert res.returncode != 0, (cmd, bad, res.stdout)
        assert "Traceback" not in res.stderr
        assert "bad testbed name" in res.stderr, res.stderr
    assert (victim / "keep.txt").read_text() == "precious"
    assert state.exists()


def test_exec_and_run_refuse_bad_names(layout):
    state, victim = layout
    for args in (["exec", "--testbed", "../victim", "s1", "--", "true"],
                 ["run", "--testbed", "../victim", "--policy", "fifo"]):
        res = _cli(state, *args)
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert (victim / "keep.txt").read_text() == "precious"


def test_planted_state_outside_root_is_never_read(layout, tmp_path):
    """`down ../../some/other/dir` used to read a planted state.json, kill its pid and rm -rf it."""
    state, _ = layout
    planted = tmp_path / "some" / "other" / "dir"
    victim = _sleeper()
    try:
        from orchestrator.testbed.base import start_time

        _plant(planted, "dir", victim.pid, start_time(victim.pid))
        rel = os.path.relpath(planted, state)
        res = _cli(state, "down", rel)
        assert res.returncode != 0
        time.sleep(0.1)
        assert victim.poll() is None, "a process named by a file outside the state root was killed"
        assert (planted / "state.json").exists()
    finally:
        victim.kill()


def test_symlinked_state_folder_is_refused(layout):
    state, victim = layout
    (state / "evil").symlink_to(victim, target_is_directory=True)
    res = _cli(state, "down", "evil")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert (victim / "keep.txt").read_text() == "precious"


@needs_root
@pytest.mark.parametrize("with_start", ["none", "wrong"])
def test_down_signals_only_processes_that_are_still_the_testbeds(layout, with_start):
    """A stale or planted pid (no start time, or a start time that does not match) is not
    signalled; the testbed's state folder is still removed."""
    state, victim = layout
    other = _sleeper()
    mnt = victim / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)], check=True)
    try:
        _plant(state / "stale", "stale", other.pid, None if with_start == "none" else 1, str(mnt))
        res = _cli(state, "down", "stale")
        assert res.returncode == 0, res.stderr
        time.sleep(0.1)
        assert other.poll() is None, "down killed a process that is not the testbed's"
        assert os.path.ismount(mnt), "down unmounted a mount outside its state folder"
        assert not (state / "stale").exists()
    finally:
        other.kill()
        subprocess.run(["umount", str(mnt)], check=False)


def test_down_stops_a_recorded_process_that_is_still_ours(layout):
    """The positive case, so the tests above cannot pass by never killing anything."""
    from orchestrator.testbed.base import start_time

    state, _ = layout
    ours = _sleeper()
    try:
        _plant(state / "mine", "mine", ours.pid, start_time(ours.pid))
        res = _cli(state, "down", "mine")
        assert res.returncode == 0, res.stderr
        ours.wait(timeout=5)
        assert ours.returncode == -signal.SIGTERM
    finally:
        if ours.poll() is None:
            ours.kill()


def test_names_up_ignores_folders_that_are_not_testbed_names(layout):
    state, _ = layout
    for bad in ("UPPER", "a.b", "x" * 20):
        (state / bad).mkdir()
        (state / bad / "state.json").write_text("{}")
    res = _cli(state, "status")
    assert res.returncode == 0 and "no testbed is up" in res.stdout, res.stdout + res.stderr
