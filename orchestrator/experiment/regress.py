"""Regression suites: scenarios x policies, run on the testbed that is up, compared metric by
metric with a baseline, each metric with its tolerance.

A suite file (regress/*.yaml):

    name: nightly
    duration: 8s                 # per run, unless a case says otherwise
    datapath: nfqueue
    metrics:                     # dotted paths into summary.json, each with a tolerance
      utilization: {abs: 0.10}   # |current - baseline| <= max(abs, rel * |baseline|)
      queue_delay_ms.l4s.p95: {abs: 3, rel: 0.5}
      flows[cubic].goodput_mbps: {rel: 0.3}      # flows[<name>] picks a flow by name
    cases:
      - name: dumbbell
        scenario: testbeds/mininet-like.yaml     # a file with `scenario:`, or a scenario inline
        policies: [fifo, dualpi2]

A baseline file is JSON: {"suite", "created", "testbed", "results": {"<case>/<policy>": {metric:
value}}}. `compare` gives one row per (case/policy, metric) with status ok, DRIFT (past its
tolerance), missing (no value now), new (no baseline value), absent (no value in either: not
a change) or failed (the run did not complete); a suite passes when no row is DRIFT, missing,
new or failed.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator import strictjson
from orchestrator.bottleneck import DEFAULT_DATAPATH
from orchestrator.errors import POLICY_ERRORS, SpecError, UserError
from orchestrator.spec import units
from orchestrator.spec.load import load_model, read_yaml, validate

# a metric absent in one of baseline and run is a change; absent in both ("absent") is not
FAILING = ("DRIFT", "missing", "new", "failed")
FLOW_PATH = re.compile(r"^flows\[([a-z0-9_-]+)\]\.(.+)$")


class Tolerance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    abs: float = Field(0.0, ge=0)
    rel: float = Field(0.0, ge=0)

    def allows(self, baseline: float, current: float) -> bool:
        return abs(current - baseline) <= max(self.abs, self.rel * abs(baseline)) + 1e-12

    def describe(self) -> str:
        parts = ([f"±{self.abs:g}"] if self.abs else []) + ([f"±{self.rel:.0%}"] if self.rel else [])
        return " or ".join(parts) or "exact"


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    scenario: str | dict[str, Any]
    policies: list[str]
    datapath: str | None = None
    duration: str | None = None
    policy_args: dict[str, Any] = {}
    metrics: dict[str, Tolerance] = {}  # added to (or overriding) the suite's

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9_-]{0,39}$", v):
            raise ValueError(f"expected a case name of lowercase letters, digits, '-' or '_', got {v!r}")
        return v

    @field_validator("policies")
    @classmethod
    def _policies(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("expected at least one policy")
        return v


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    duration: str = "8s"
    datapath: str = DEFAULT_DATAPATH
    seed: int = 1
    metrics: dict[str, Tolerance]
    cases: list[Case]
    source: str = ""

    def tolerances(self, case: Case) -> dict[str, Tolerance]:
        return {**self.metrics, **case.metrics}


def load_suite(path: str | Path) -> Suite:
    suite = load_model(path, Suite, source_key="source",
                       what="a mapping with keys name, metrics, cases")
    _check(suite)
    return suite


def _check(suite: Suite) -> None:
    src = suite.source
    seen = set()
    for i, case in enumerate(suite.cases):
        if case.name in seen:
            raise SpecError(src, f"cases[{i}].name", f"duplicate case name {case.name!r}")
        seen.add(case.name)
        for key in suite.tolerances(case):
            if not re.match(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$", key) and not FLOW_PATH.match(key):
                raise SpecError(src, f"cases[{i}].metrics.{key}",
                                "expected a dotted path into summary.json, like queue_delay_ms.l4s.p95 "
                                "or flows[cubic].goodput_mbps")
        for value in (case.duration, suite.duration):
            if value is not None and units.seconds(value) <= 0:
                raise SpecError(src, f"cases[{i}].duration", f"expected a positive duration, got {value!r}")
    if not suite.cases:
        raise SpecError(src, "cases", "expected at least one case")


# ---------------------------------------------------------------- metrics


def metric(summary: dict[str, Any], path: str) -> float | None:
    """A number from summary.json by dotted path; flows[<name>].key picks a flow by name."""
    m = FLOW_PATH.match(path)
    if m:
        flow = next((f for f in summary.get("flows") or [] if isinstance(f, dict) and f.get("name") == m[1]),
                    None)
        return metric(flow, m[2]) if flow is not None else None
    node: Any = summary
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or math.isnan(node):
        return None
    return float(node)


@dataclass
class Row:
    case: str
    metric: str
    baseline: float | None
    current: float | None
    tolerance: str
    status: str

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline


def compare(current: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]],
            tolerances: dict[str, dict[str, Tolerance]]) -> list[Row]:
    """One row per (case/policy, metric). current[key] holds the metrics and '_status'."""
    rows = []
    for key, tols in tolerances.items():
        cur, base = current.get(key, {}), baseline.get(key, {})
        failed = cur.get("_status", "complete") != "complete"
        for name, tol in tols.items():
            b, c = base.get(name), cur.get(name)
            if failed:
                status = "failed"
            elif c is None and b is None:
                # absent in both (a case without L4S traffic has no L4S delays): no drift
                status = "absent"
            elif c is None:
                status = "missing"
            elif b is None:
                status = "new"
            else:
                status = "ok" if tol.allows(b, c) else "DRIFT"
            rows.append(Row(key, name, b, c, tol.describe(), status))
    return rows


def passed(rows: list[Row]) -> bool:
    return not any(r.status in FAILING for r in rows)


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "metric", "baseline", "current", "delta", "tolerance", "status"])
        for r in rows:
            w.writerow([r.case, r.metric, _num(r.baseline), _num(r.current), _num(r.delta), r.tolerance,
                        r.status])


def format_table(rows: list[Row]) -> str:
    head = ("case", "metric", "baseline", "current", "delta", "tolerance", "status")
    body = [(r.case, r.metric, _num(r.baseline), _num(r.current), _num(r.delta), r.tolerance, r.status)
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line) for line in [head, *body])


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


# ---------------------------------------------------------------- baselines


def read_baseline(path: Path, suite: Suite) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no baseline {path}; make one with --update-baseline") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a baseline file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UserError(f"{path}: not a baseline file (expected a 'results' mapping)")
    if data.get("suite") != suite.name:
        raise UserError(f"{path} is the baseline of suite {data.get('suite')!r}, not {suite.name!r}")
    return data["results"]


def write_baseline(path: Path, suite: Suite, current: dict[str, dict[str, Any]],
                   testbed: dict[str, Any]) -> None:
    bad = [k for k, v in current.items() if v.get("_status") != "complete"]
    if bad:
        raise UserError(f"not writing a baseline: runs did not complete: {', '.join(bad)}")
    results = {k: {m: v for m, v in vals.items() if not m.startswith("_") and v is not None}
               for k, vals in current.items()}
    data = {"suite": suite.name, "created": time.time(), "testbed": testbed, "results": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(strictjson.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- running


def load_scenario(case: Case, suite: Suite, tb: Any) -> Any:
    """The case's scenario (a file with `scenario:`, a scenario file, or inline), checked
    against the testbed that is up."""
    from orchestrator.spec.scenario import Scenario

    source, data = f"{suite.source}: cases[{case.name}].scenario", case.scenario
    if isinstance(data, str):
        path = (Path(suite.source).parent / data) if not Path(data).is_absolute() else Path(data)
        if not path.exists():
            path = Path(data)
        source = str(path)
        data = read_yaml(path)
    if isinstance(data, dict) and "scenario" in data:
        data = data["scenario"]
    scenario = validate(Scenario, data, source)
    scenario.check(tb.spec().roles(), source, "")
    return scenario


def run_suite(tb: Any, suite: Suite, out_dir: Path,
              progress: Callable[[str, float], None] | None = None,
              on_run: Callable[[str, Path | None, str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run every case x policy on tb; returns {case/policy: {metric: value, _status, _run}}.
    A run that fails is recorded as failed and the suite goes on."""
    from orchestrator.experiment.points import PointFile, run_point
    from orchestrator.experiment.run import Run, RunConfig

    current: dict[str, dict[str, Any]] = {}
    scenarios = {c.name: load_scenario(c, suite, tb) for c in suite.cases}  # all errors first
    # every case x policy is a point of the series, so regress.json shows what ran and how
    todo = [(case, policy) for case in suite.cases for policy in case.policies]
    points = PointFile(out_dir / "regress.json")
    points.write({"suite": suite.name, "points": [
        {"case": case.name, "policy": policy, "run": None, "status": "pending"} for case, policy in todo]})
    for index, (case, policy) in enumerate(todo):
        key = f"{case.name}/{policy}"
        config = RunConfig(policy=policy, datapath=case.datapath or suite.datapath,
                           policy_args=dict(case.policy_args),
                           duration_s=units.seconds(case.duration or suite.duration), seed=suite.seed,
                           results_root=out_dir, label={"suite": suite.name, "case": case.name})
        run = Run(tb, scenarios[case.name], config)
        try:
            run_dir: Path | None = run_point(points, index, run, {}, progress)
            summary = _summary(run_dir)
            status = summary.get("status", "aborted") if summary else "no summary"
        except (UserError, *POLICY_ERRORS, OSError, RuntimeError) as e:
            # a failed run is a result of the suite, and the suite goes on
            run_dir, summary = run.dir, {}
            status = f"failed: {e}"
        values = {m: metric(summary, m) for m in suite.tolerances(case)}
        current[key] = {**values, "_status": status, "_run": str(run_dir) if run_dir else None}
        if on_run:
            on_run(key, run_dir, status)
    return current


def _summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def with_duration(suite: Suite, duration: str) -> Suite:
    """The suite with every case lasting `duration` (a quick check; compare it only with a
    baseline made with the same duration)."""
    return suite.model_copy(update={"duration": duration, "cases": [
        c.model_copy(update={"duration": None}) for c in suite.cases]})


def tolerances(suite: Suite) -> dict[str, dict[str, Tolerance]]:
    return {f"{c.name}/{p}": suite.tolerances(c) for c in suite.cases for p in c.policies}
