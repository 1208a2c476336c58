"""Run a scenario's flows on schedule and collect their reports.

Order: check every flow (plan.make) before anything starts; set up the kernel state the flows
need; start every receiver and wait until each is ready; start the project's senders early
(they wait on stdin); fix the scenario's start t0 and release everyone; drive the clock
(iperf3 starts when due, overdue senders are stopped); stop the receivers; write
flows/<flow>.json. Whatever happens (errors, Ctrl-C), every process it started is stopped and
every kernel object it made is removed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator import strictjson
from orchestrator.errors import UserError
from orchestrator.spec.scenario import FlowSpec, Scenario
from orchestrator.testbed.base import Testbed
from orchestrator.workloads import plan as planmod
from orchestrator.workloads.iperf import IperfRunner
from orchestrator.workloads.kernelstate import KernelState
from orchestrator.workloads.runners import Runner, ScapyRunner, TcpSenderRunner, UdpRunner

LEAD_S = 0.3  # from releasing the senders to the scenario's start
GRACE_S = 3.0  # how long past its end a flow may take to drain before it is stopped
READY_TIMEOUT_S = 30.0  # for receivers and senders to come up (scapy imports take seconds)
SERVER_LINGER_S = 1.0  # receivers keep counting this long after the last sender ends
TICK_S = 0.01

Progress = Callable[[float, float], None]


def run_flows(testbed: Testbed, scenario_or_flows: Scenario | list[FlowSpec], out_dir: str | Path,
              duration: float | None = None, on_progress: Progress | None = None,
              on_t0: Callable[[float], None] | None = None, t0_lead_s: float = 0.0) -> list[dict[str, Any]]:
    """Run the flows; returns their reports (also written to out_dir/flows/<flow>.json).

    duration: the scenario's length in seconds (default: the scenario's, or the last flow's
    end). on_progress(elapsed_s, total_s) is called about once a second. on_t0(epoch) is
    told the scenario's start before anyone is released (a dynamic link counts from it);
    t0_lead_s puts that start further ahead, for a callback that needs time to deliver it."""
    flows, duration = _flows_and_duration(scenario_or_flows, duration)
    plans = planmod.make(testbed, flows, duration)
    out = Path(out_dir)
    (out / "flows").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    state = KernelState(testbed)
    runners = [runner_for(testbed, p, out / "logs") for p in plans]
    ok = False
    try:
        state.setup(plans)
        for p in plans:
            p.ecn = state.ecn_sent(p)
        _start(runners)
        t0 = time.time() + LEAD_S + t0_lead_s
        if on_t0 is not None:
            on_t0(t0)
        for r in runners:
            r.release(t0)
        _drive(runners, t0, duration, on_progress)
        _stop_servers(runners)
        reports = [_report(r, t0) for r in runners]
        for rep in reports:
            _write_json(out / "flows" / f"{rep['name']}.json", rep)
        ok = True
        return reports
    finally:
        for r in runners:
            r.kill()
        failed = state.undo()
        if failed and ok:
            raise UserError(f"the flows ran, but cleaning up failed: {'; '.join(failed)}")


def _flows_and_duration(what: Scenario | list[FlowSpec],
                        duration: float | None) -> tuple[list[FlowSpec], float]:
    if isinstance(what, Scenario):
        return list(what.flows), duration if duration is not None else what.duration_s
    flows = list(what)
    return flows, duration if duration is not None else planmod.scenario_end(flows)


def _start(runners: list[Runner]) -> None:
    for r in runners:
        r.start_server()
    _wait("receivers", [r.server_ready for r in runners])
    for r in runners:
        r.launch()
    _wait("senders", [r.client_ready for r in runners])


def _wait(what: str, checks: list[Callable[[], bool]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(checks)
    while pending:
        pending = [c for c in pending if not c()]
        if pending and time.monotonic() > deadline:
            raise UserError(f"{len(pending)} {what} not ready after {READY_TIMEOUT_S:g}s (see logs/)")
        if pending:
            time.sleep(0.02)


def _deadline(r: Runner, t0: float, duration: float) -> float:
    if r.plan.duration_s is None:
        return t0 + duration  # a size-bound flow stops at the scenario's end at the latest
    return r.scheduled_end + GRACE_S


def _drive(runners: list[Runner], t0: float, duration: float, on_progress: Progress | None) -> None:
    next_progress = 0.0
    while True:
        now = time.time()
        busy = False
        for r in runners:
            r.tick(now)
            if r.running():
                busy = True
                if now > _deadline(r, t0, duration):
                    r.stop_client()
        if on_progress is not None and now >= next_progress:
            on_progress(min(max(now - t0, 0.0), duration), duration)
            next_progress = now + 1.0
        if not busy:
            return
        time.sleep(TICK_S)


def _stop_servers(runners: list[Runner]) -> None:
    until = time.time() + SERVER_LINGER_S
    for r in runners:
        r.stop_server(wait=max(until - time.time(), 0.0))


def _report(r: Runner, t0: float) -> dict[str, Any]:
    rep = r.report()
    rep["scenario_start"] = t0
    return rep


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(strictjson.dumps(data, indent=1))
    os.replace(tmp, path)


def runner_for(testbed: Testbed, plan: planmod.FlowPlan, logs: Path) -> Runner:
    kinds: dict[str, type[Runner]] = {"tcp": IperfRunner, "l4s": TcpSenderRunner, "udp": UdpRunner,
                                      "scapy": ScapyRunner}
    return kinds[plan.spec.kind](testbed, plan, logs)
