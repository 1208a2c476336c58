"""The timer process that applies a rate schedule to HTB classes (ebpf and kernel datapaths).

HTB has no notion of time, so a process in the router's namespace changes the classes' rates
at the scheduled instants with `tc class change`, and records for every change when it was
due and when tc returned (the kernel applies the change inside that call), so the lateness of
each change is measured, not assumed. The argument lists are built before the first change,
so the only work left at each instant is one tc per class.

    python -m orchestrator.bottleneck.htb_schedule CONFIG.json

CONFIG: {"dev": "...", "t0_epoch": E or "t0_path": FILE (wait for the run to write E there),
         "changes": [[t, bit/s], ...] (t since E),
         "classes": [{"parent": "1:", "classid": "1:1", "share": 1.0, "prio": null}, ...],
         "out": "PATH.jsonl"}
A class's rate is share * R (at least MIN_RATE_BPS) and its ceil R: the layout of the ebpf
DualQ shape (1:1 the link, 1:11 and 1:12 its L and C shares) and of the baseline shaper (1:1).
One JSON line per change goes to `out`, flushed at once: a killed timer keeps its record.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from orchestrator.bottleneck.signals import stop_event

# the device name reaches tc's argv: a kernel interface name, never an option
IFACE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,14}$")
MIN_RATE_BPS = 1000
CLASSID_CHARS = set("0123456789abcdef:")


def class_change_argv(dev: str, cls: dict[str, Any], rate_bps: float) -> list[str]:
    """`tc class change` for one HTB class at link rate `rate_bps`."""
    if not IFACE_NAME.fullmatch(dev):
        raise ValueError(f"expected an interface name, got {dev!r}")
    for key in ("parent", "classid"):
        if not cls[key] or not set(cls[key]) <= CLASSID_CHARS:
            raise ValueError(f"expected a tc handle like '1:11' for {key}, got {cls[key]!r}")
    rate = max(int(cls.get("share", 1.0) * rate_bps), MIN_RATE_BPS)
    argv = ["tc", "class", "change", "dev", dev, "parent", cls["parent"], "classid", cls["classid"],
            "htb", "rate", f"{rate}bit", "ceil", f"{max(int(rate_bps), MIN_RATE_BPS)}bit"]
    if cls.get("prio") is not None:
        argv += ["prio", str(int(cls["prio"]))]  # a change without prio would reset it to 0
    return argv


def plan(config: dict[str, Any], t0: float) -> list[tuple[float, float, list[list[str]]]]:
    """(due epoch, rate, the commands) of every change, in order. `timeline` (commands built
    by schedule_commands, e.g. ipfw on a FreeBSD router) or `changes` with HTB `classes`."""
    if "timeline" in config:
        return [(t0 + float(t), float(rate), [list(map(str, argv)) for argv in cmds])
                for t, rate, cmds in config["timeline"]]
    return [(t0 + float(t), float(rate),
             [class_change_argv(config["dev"], c, rate) for c in config["classes"]])
            for t, rate in config["changes"]]


def batched(commands: list[list[str]], path: str) -> list[list[str]]:
    """Several tc commands as one `tc -batch FILE` (one process start instead of three: the
    start of tc is most of a change's lateness). Every token was validated, none holds a space."""
    if len(commands) < 2 or any(argv[0] != "tc" for argv in commands):
        return commands
    with open(path, "w") as f:
        f.write("".join(" ".join(argv[1:]) + "\n" for argv in commands))
    return [["tc", "-batch", path]]


def realtime(priority: int = 10) -> bool:
    """Run (and start tc) under SCHED_FIFO where allowed: the timer sleeps nearly all the time,
    and a change that waits behind the run's senders and datapath is a late change. tc
    inherits the policy, and it runs for milliseconds. Best effort: False if refused."""
    import os

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError):
        return False
    return True


def run(config: dict[str, Any]) -> int:
    stop = stop_event()
    realtime()
    plan(config, 0.0)  # every command is built (and every name checked) before we say ready
    print("htb-schedule ready", flush=True)
    t0 = config.get("t0_epoch")
    if t0 is None:
        from orchestrator.spec.dynamic import wait_t0

        t0 = wait_t0(config["t0_path"], stop.is_set)
        if t0 is None:
            return 0  # stopped before the flows started
    tmp = tempfile.mkdtemp(prefix="htb-schedule-")
    try:
        todo = [(due, rate, batched(cmds, f"{tmp}/{k}.batch"))
                for k, (due, rate, cmds) in enumerate(plan(config, float(t0)))]
        return _apply(config, todo, stop.is_set)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _apply(config: dict[str, Any], todo: list[tuple[float, float, list[list[str]]]], stopping: Any) -> int:
    errors = 0
    with open(config["out"], "a") as out:
        for due, rate, commands in todo:
            while not stopping():
                left = due - time.time()
                if left <= 0:
                    break
                time.sleep(min(left, 0.2) if left > 0.002 else left)
            if stopping():
                break
            began = time.time()
            ok = True
            for argv in commands:
                res = subprocess.run(argv, capture_output=True, text=True)
                if res.returncode != 0:
                    ok = False
                    errors += 1
                    print(f"htb-schedule: {' '.join(argv)}: {res.stderr.strip()}", file=sys.stderr,
                          flush=True)
            applied = time.time()
            out.write(json.dumps({"due": due, "began": began, "applied": applied, "rate_bps": rate,
                                  "late_ms": (applied - due) * 1e3, "ok": ok}) + "\n")
            out.flush()
        # a schedule that ends before the run does: wait to be stopped, so stop() is uniform
        while not stopping():
            time.sleep(0.2)
    return 1 if errors else 0


def read(path: str) -> list[dict[str, Any]]:
    """The records of a timer's out file (a half-written last line is skipped)."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        pass
    return rows


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.exit(run(json.load(f)))
