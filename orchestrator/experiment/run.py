"""A Run: one experiment on a testbed that is up.

Order of things: check everything (policy, datapath, flows) before anything starts; then
deploy the policy, start capture, drive the flows, stop all in reverse order, analyse. An
interrupt (Ctrl-C, SIGTERM) stops the same way and marks the run aborted; whatever was
collected stays readable.
"""

from __future__ import annotations

import copy
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.bottleneck import DEFAULT_DATAPATH, datapath_class
from orchestrator.errors import Terminated, UserError, policy_errors
from orchestrator.experiment import results
from orchestrator.spec.scenario import Scenario
from orchestrator.testbed.base import Testbed

Progress = Callable[[str, float], None]  # (phase, seconds left or -1)

SAID: set[str] = set()  # warnings already given in this process


@dataclass
class RunConfig:
    policy: str
    datapath: str = DEFAULT_DATAPATH
    policy_args: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None  # None: the scenario's
    seed: int = 1
    results_root: Path | None = None
    label: dict[str, Any] = field(default_factory=dict)  # sweep point, for the manifest
    explore: dict[str, float] | None = None  # exploration noise (policies.explore), for collect
    # a link that changes during the run (spec/dynamic.py, LinkDynamics.to_json)
    link_dynamics: dict[str, Any] | None = None


def with_duration(scenario: Scenario, duration_s: float | None) -> Scenario:
    if duration_s is None:
        return scenario
    if duration_s <= 0:
        raise UserError(f"--duration: expected a positive number of seconds, got {duration_s:g}")
    # a shorter run cuts the flows: those starting after its end go, and one timed to end
    # after it ends with it (a size-bounded flow just stops at the end, as it would anyway)
    flows = [f if f.duration is None or f.start_s + f.duration_s(duration_s) <= duration_s
             else f.model_copy(update={"duration": f"{duration_s - f.start_s:g}s"})
             for f in scenario.flows if f.start_s < duration_s]
    return scenario.model_copy(update={"duration": f"{duration_s}s", "flows": flows})


class Run:
    def __init__(self, testbed: Testbed, scenario: Scenario, config: RunConfig) -> None:
        import policies

        self.tb, self.config = testbed, config
        self.scenario = with_duration(scenario, config.duration_s)
        if not self.scenario.flows:
            raise UserError("the scenario has no flows that start within the run's duration")
        with policy_errors():
            self.policy = policies.make(config.policy, config.policy_args)
        if config.explore:
            from policies.explore import Explore

            self.policy = Explore(self.policy, seed=config.seed, **config.explore)
        self.datapath = datapath_class(config.datapath)(testbed, seed=config.seed)
        self.datapath.check(self.policy)
        from orchestrator import workloads

        workloads.validate(testbed, self.scenario.flows, self.scenario.duration_s)
        from orchestrator.bottleneck import dynamic_run
        from orchestrator.spec import dynamic

        self.link_static: dict[str, Any] = {}
        self.link_seen: Any = None
        if config.link_dynamics is None:  # the testbed file's link, with the scenario's override
            config.link_dynamics, self.link_static = dynamic_run.for_run(testbed, self.scenario)
        self.dynamics = dynamic.LinkDynamics.from_json(config.link_dynamics) if config.link_dynamics else None
        # said once per process: a sweep of ten points warns about its schedule once
        said = dynamic_run.check(self.dynamics, config.datapath, self.scenario.duration_s)
        self.warnings = [w for w in said if w not in SAID]
        SAID.update(self.warnings)
        self.datapath.duration_s = self.scenario.duration_s
        self.dir: Path | None = None

    def manifest(self, status: str, **extra: Any) -> dict[str, Any]:
        # the link as the run had it (a scenario's `link:` sets it for the run only)
        bn = self.link_seen or self.tb.bottleneck
        return {
            "run_id": self.dir.name if self.dir else None, "status": status, "pid": os.getpid(),
            "policy": self.policy.name, "policy_args": _params(self.policy),
            "datapath": self.config.datapath, "seed": self.config.seed,
            "testbed": self.tb.name, "provider": self.tb.provider, "spec": self.tb.spec_data,
            "scenario": self.scenario.model_dump(mode="json"),
            "duration_s": self.scenario.duration_s,
            "link_rate_mbps": bn.rate_bps / 1e6, "link_rate_bps": bn.rate_bps,
            "rtt_ms": bn.rtt_s * 1e3, "buffer_pkts": bn.buffer_pkts, "buffer_bytes": bn.buffer_bytes,
            "flows": [f.model_dump(mode="json") for f in self.scenario.flows],
            "sweep_point": self.config.label, "explore": self.config.explore,
            "link_dynamics": self.config.link_dynamics,
            "versions": results.versions(), **extra,
        }

    def execute(self, progress: Progress | None = None) -> Path:
        """Run it; return the run directory. Raises KeyboardInterrupt after cleaning up."""
        from orchestrator import workloads
        from orchestrator.bottleneck import dynamic_run
        from orchestrator.experiment.capture import Capture

        progress = progress or (lambda phase, left: None)
        random.seed(self.config.seed)
        self.dir = results.new_run_dir(self.policy.name, self.config.datapath, self.config.results_root)
        started = time.time()
        results.write_json(self.dir / "manifest.json", self.manifest("running", started=started))
        status, reason, counters = "aborted", "", {}
        restore = _interrupt_on_sigterm()
        try:
            progress("deploying policy", -1)
            run_dir = self.dir
            with dynamic_run.applied(self.tb, self.dynamics, run_dir, self.scenario.duration_s,
                                     self.link_static):
                self.link_seen = copy.copy(self.tb.bottleneck)
                self.datapath.start(self.policy, self.dir)
                try:
                    with Capture(self.tb, self.dir):
                        workloads.run_flows(self.tb, self.scenario.flows, self.dir,
                                            self.scenario.duration_s,
                                            on_progress=lambda done, total: progress("traffic",
                                                                                     total - done),
                                            on_t0=None if self.dynamics is None else
                                            lambda t0: dynamic_run.begin(self.tb, run_dir, t0),
                                            t0_lead_s=dynamic_run.t0_lead(self.tb, self.dynamics))
                finally:
                    progress("stopping", -1)
                    counters = self.datapath.stop() or {}
            status = "complete"
        except KeyboardInterrupt:
            reason = "interrupted"
            raise
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            raise
        finally:
            restore()
            results.write_json(self.dir / "manifest.json", self.manifest(
                status, started=started, ended=time.time(), datapath_counters=counters,
                abort_reason=reason or None))
            progress("analysing", -1)
            analyze_quietly(self.dir)
        return self.dir


def _params(policy: Any) -> dict[str, Any]:
    import dataclasses

    try:
        return dataclasses.asdict(policy.params)
    except TypeError:
        return {}


def _interrupt_on_sigterm() -> Callable[[], None]:
    """SIGTERM behaves like Ctrl-C, so `kill` of a run also cleans up and marks it aborted."""
    def handler(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, old)


def analyze_quietly(run_dir: Path) -> dict[str, Any] | None:
    """Summary, tables, plots and report of a run; never fails the run itself."""
    from orchestrator.analysis import analyze

    try:
        return analyze(run_dir)
    except Exception as e:  # noqa: BLE001 - a broken analysis must not lose the run
        (run_dir / "analysis-error.txt").write_text(f"{type(e).__name__}: {e}\n")
        return None

