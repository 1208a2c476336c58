"""Applying a dynamic link during one run, on every datapath.

The run puts the link's dynamics (LinkDynamics.to_json) in `testbed.extra['link_dynamics']`
for its duration; the datapaths read it here:

- nfqueue: the link process gets the schedule in its config and applies it per packet;
- ebpf and kernel: `HtbTimer` runs htb_schedule.py on the router, which changes the HTB
  classes at the scheduled times and records when each change took effect;
- delay schedules: the delay line (delayline.py) restarts with the schedule, or, where the
  kernel has netem, the timer changes netem's delay.

Everything counts from the scenario's start, which the run writes to `t0_path(...)` on the
router when it releases the flows (`begin`). At stop each applier leaves a record, and
`write_capacity` turns the HTB timer's into telemetry/capacity.json, the file analysis reads
(the nfqueue link writes its own).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.bottleneck import htb_schedule
from orchestrator.errors import SpecError, UserError
from orchestrator.spec.dynamic import T0_FILE, DynamicsError, LinkDynamics, read_t0
from orchestrator.testbed.base import Testbed

REPO = Path(__file__).resolve().parents[2]
EXTRA_KEY = "link_dynamics"
DELAY_KEY = "delay_schedule"
TIMER_TAG = "htb-schedule"
DEFAULT_DURATION_S = 600.0
REMOTE_T0_LEAD_S = 1.5


def of(tb: Testbed) -> LinkDynamics | None:
    """The dynamics of the run in progress on this testbed, or None (a static link)."""
    data = tb.extra.get(EXTRA_KEY)
    return LinkDynamics.from_json(data) if data else None


def t0_path(tb: Testbed, run_dir: str | Path) -> str:
    """Where the run writes the scenario's start on the router (one file per run)."""
    return f"{tb.workdir(tb.bottleneck.router, Path(run_dir) / 'telemetry')}/{T0_FILE}"


def t0_lead(tb: Testbed, dyn: LinkDynamics | None) -> float:
    """How much earlier the run must fix t0 so the router has it in time: a copy over SSH
    takes a few hundred ms; on this machine the file is there at once."""
    if dyn is None or not dyn.dynamic or tb.shares_files(tb.bottleneck.router):
        return 0.0
    return REMOTE_T0_LEAD_S


def begin(tb: Testbed, run_dir: str | Path, t0_epoch: float) -> None:
    """The flows are released at t0_epoch: every schedule applier starts counting from it."""
    path = t0_path(tb, run_dir)
    tb.put(tb.bottleneck.router, path, json.dumps({"t0_epoch": t0_epoch}))
    Path(run_dir, "telemetry").mkdir(parents=True, exist_ok=True)
    Path(run_dir, "telemetry", T0_FILE).write_text(json.dumps({"t0_epoch": t0_epoch}))


def start_timer(datapath: Any, run_dir: Path, classes: list[dict[str, Any]]) -> HtbTimer | None:
    """Start the HTB timer for a datapath whose rate lives in HTB, if the run's link changes."""
    dyn = of(datapath.testbed)
    if dyn is None or not dyn.varies_rate:
        return None
    timer = HtbTimer(datapath.testbed, Path(run_dir), classes=classes)
    timer.start(dyn, getattr(datapath, "duration_s", DEFAULT_DURATION_S))
    return timer


def finish_timer(datapath: Any, timer: HtbTimer | None, run_dir: Path | None,
                 remove_remote: bool = False) -> dict[str, Any]:
    """Stop the timer and write telemetry/capacity.json; the counters say how late it was.
    remove_remote: also remove the timer's folder on a remote router (a datapath that fetches
    its own telemetry folder afterwards, as ebpf does, leaves that to its fetch)."""
    if timer is None or run_dir is None:
        return {}
    out = timer.stop(remove_remote)
    dyn = of(datapath.testbed)
    if dyn is not None:
        out["schedule"] = write_capacity(Path(run_dir), dyn, datapath.name, timer.name)
    return out


class HtbTimer:
    """htb_schedule.py on the router for one run: start before the flows, stop after."""

    def __init__(self, tb: Testbed, run_dir: Path, classes: list[dict[str, Any]] | None = None,
                 timeline: list[tuple[float, float, list[list[str]]]] | None = None,
                 name: str = "htb-changes") -> None:
        self.tb, self.run_dir = tb, Path(run_dir)
        self.classes, self.timeline, self.name = classes, timeline, name
        self.proc: subprocess.Popen | None = None
        self.remote = tb.workdir(tb.bottleneck.router, self.run_dir / "telemetry")
        self.out = f"{self.remote}/{name}.jsonl"

    def start(self, dyn: LinkDynamics, duration_s: float) -> None:
        tb, router = self.tb, self.tb.bottleneck.router
        cfg: dict[str, Any] = {"dev": tb.bottleneck.egress, "t0_path": t0_path(tb, self.run_dir),
                               "out": self.out}
        if self.timeline is not None:
            cfg["timeline"] = [[t, rate, cmds] for t, rate, cmds in self.timeline]
        else:
            cfg["changes"] = [[t, rate] for t, rate in dyn.capacity_steps(duration_s)]
            cfg["classes"] = self.classes
        path = f"{self.remote}/{self.name}.json"
        tb.put(router, path, json.dumps(cfg))
        log = self.run_dir / "telemetry" / f"{self.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as f:
            argv = [tb.python(router), "-m", "orchestrator.bottleneck.htb_schedule", path]
            # from the project (its place on the router, for ssh), so `-m` finds this checkout
            self.proc = tb.popen(router, argv, tag=TIMER_TAG, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 30
        while b"htb-schedule ready" not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise UserError(f"the schedule timer did not start: {log.read_text()[-800:]}")
            time.sleep(0.02)

    def stop(self, remove_remote: bool = False) -> dict[str, Any]:
        """Stop the timer and bring its record home into telemetry/<name>.jsonl (nothing to
        copy where the router shares this filesystem)."""
        if self.proc is None:
            return {}
        rc = self.tb.stop(self.proc)
        self.proc = None
        router, local = self.tb.bottleneck.router, self.run_dir / "telemetry"
        if remove_remote:
            self.tb.fetch(router, self.remote, local)
        else:
            self.tb.collect(router, self.remote, local)
        return {"schedule_timer_exit_code": rc}


def lateness(rows: list[dict[str, Any]]) -> dict[str, float | int | None]:
    import numpy as np

    late = np.array([r["late_ms"] for r in rows if "late_ms" in r], dtype=float)
    if not late.size:
        return {"changes": 0, "late_ms_p50": None, "late_ms_p99": None, "late_ms_max": None}
    return {"changes": int(late.size), "late_ms_p50": float(np.percentile(late, 50)),
            "late_ms_p99": float(np.percentile(late, 99)), "late_ms_max": float(late.max())}


def write_capacity(run_dir: Path, dyn: LinkDynamics, datapath: str,
                   name: str = "htb-changes") -> dict[str, Any]:
    """telemetry/capacity.json from the timer's record: each rate in force from when tc
    returned (not from when it was due). Returns the lateness figures for the counters."""
    tel = Path(run_dir) / "telemetry"
    rows = htb_schedule.read(str(tel / f"{name}.jsonl"))
    t0 = read_t0(tel / T0_FILE)
    out = {"datapath": datapath, "kind": "trace" if dyn.trace is not None else "steps", "t0_epoch": t0,
           "steps": [[r["applied"], r["rate_bps"]] for r in rows if r.get("ok")],
           "due": [[r["due"], r["rate_bps"]] for r in rows],
           "changes": [list(c) for c in dyn.changes()], "samples": [],
           "note": "HTB class changes by the timer process; each rate from when tc returned",
           **{k: v for k, v in lateness(rows).items() if k != "changes"}}
    (tel / "capacity.json").write_text(json.dumps(out))
    return lateness(rows)


# ---------------------------------------------------------------- delay schedules


def delay_schedule(tb: Testbed, dyn: LinkDynamics, run_dir: Path) -> dict[str, Any] | None:
    """The delay line's `schedule` config for this run (None: no delay schedule)."""
    if dyn.rtt is None:
        return None
    bn = tb.bottleneck
    share = bn.forward_delay_s / bn.rtt_s if bn.rtt_s > 0 else 0.0
    remote = tb.workdir(bn.router, Path(run_dir) / "telemetry")
    return {"steps": dyn.delay_steps(share), "t0_path": t0_path(tb, run_dir),
            "applied_path": f"{remote}/delay-changes.json"}



# ---------------------------------------------------------------- one run


def check(dyn: LinkDynamics | None, datapath: str, duration_s: float) -> list[str]:
    """Refuse what the datapath cannot apply (a SpecError naming the file and key); return
    warnings to say once (e.g. a schedule longer than the run)."""
    if dyn is None or not dyn.dynamic:
        return []
    try:
        warnings = dyn.check_run(datapath, duration_s)
    except DynamicsError as e:
        raise SpecError(dyn.source or "link", dyn.prefix + e.key, e.message) from None
    where = f"{dyn.source}: " if dyn.source else ""
    return [f"{where}{dyn.prefix}{w}" for w in warnings]


@contextmanager
def applied(tb: Testbed, dyn: LinkDynamics | None, run_dir: Path, duration_s: float,
            static: dict[str, Any] | None = None) -> Iterator[None]:
    """For one run: the scenario's static link values (rate, RTT, buffer: set, then restored),
    the dynamics where the datapaths find them, and a delay schedule on the delay line
    (restarted with it) or, where the kernel has netem, on a timer. Restored after."""
    from orchestrator.bottleneck import shaping as link

    if static:
        bn = tb.bottleneck
        saved = (bn.rate_bps, bn.rtt_s, tb.extra.get("buffer_spec"))
        link.reconfigure(tb, rate_bps=static.get("rate_bps"), rtt_s=static.get("rtt_s"),
                         buffer=static.get("buffer"))
        try:
            with applied(tb, dyn, run_dir, duration_s):
                yield
        finally:
            link.reconfigure(tb, rate_bps=saved[0], rtt_s=saved[1], buffer=saved[2])
        return
    if dyn is None or not dyn.dynamic:
        yield
        return
    from orchestrator.bottleneck.schedule_commands import netem_timeline

    bn = tb.bottleneck
    tb.extra[EXTRA_KEY] = dyn.to_json()
    tb.save()
    delay_timer: HtbTimer | None = None
    restarted = False
    try:
        if dyn.rtt is not None and bn.delay_mode == "netem":
            ifaces = [i.name for i in tb.host(bn.router).interfaces if i.name != bn.egress]
            delay_timer = HtbTimer(tb, run_dir, timeline=netem_timeline(bn, dyn, ifaces),
                                   name="delay-changes")
            delay_timer.start(dyn, duration_s)
        elif dyn.rtt is not None:
            tb.extra[DELAY_KEY] = delay_schedule(tb, dyn, run_dir)
            tb.save()
            link.stop_delay(tb)
            restarted = True
            link.start_delay(tb)
        yield
    finally:
        if delay_timer is not None:
            delay_timer.stop(remove_remote=True)
        tb.extra.pop(EXTRA_KEY, None)
        tb.extra.pop(DELAY_KEY, None)
        tb.save()
        if restarted:  # back to the testbed's static delay line
            link.stop_delay(tb)
            link.start_delay(tb)
            # the schedule's delay line wrote its record (delay-changes.json) as it stopped
            remote = tb.workdir(bn.router, Path(run_dir) / "telemetry")
            tb.fetch(bn.router, remote, Path(run_dir) / "telemetry")


def for_run(tb: Testbed, scenario: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the run's dynamics as JSON or None, the static link values to set for the run) from
    the testbed file's bottleneck and the scenario's `link:` override (its keys win)."""
    from orchestrator.spec.dynamic import nominal, parse

    spec_bn: dict[str, Any] = {}
    spec_prefix = "bottleneck."
    for i, lk in enumerate((tb.spec_data or {}).get("links") or []):
        if isinstance(lk, dict) and lk.get("bottleneck"):
            spec_bn = {k: v for k, v in lk["bottleneck"].items() if v is not None}
            spec_prefix = f"links[{i}].bottleneck."  # as the testbed file names it
    override = dict(getattr(scenario, "link", None) or {})
    merged = {k: spec_bn[k] for k in ("rate", "rtt", "trace", "loss") if k in spec_bn}
    if "rate" in override or "trace" in override:  # the scenario's capacity replaces the testbed's
        merged.pop("rate", None)
        merged.pop("trace", None)
    merged.update({k: v for k, v in override.items() if k != "buffer"})
    own = getattr(scenario, "_source", "") if override else ""
    source = str(own or (tb.spec_data or {}).get("source") or "")
    dyn = parse(merged, "/", source=source, prefix="link." if override else spec_prefix)
    static: dict[str, Any] = {}
    if override:
        rate, rtt = nominal({k: v for k, v in override.items() if k in ("rate", "rtt", "trace")})
        if rate is not None:
            static["rate_bps"] = rate
        if rtt is not None:
            static["rtt_s"] = rtt
        if "buffer" in override:
            static["buffer"] = override["buffer"]
    return (dyn.to_json() if dyn.dynamic else None), static
