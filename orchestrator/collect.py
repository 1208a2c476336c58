"""Collect an experience pool, and evaluate policies on held-out scenarios, in the live testbed.

A matrix file (scenarios/collect.yaml) names link settings, flow mixes and behaviour policies.
`plan` draws scenarios from their cross product and sets some aside as held out; `collect` runs
the others, each with one behaviour policy wrapped in exploration noise, and pools their
control-loop rows; `evaluate` runs chosen policies closed loop on the held-out scenarios.
Everything is recorded in <out>/collect.json, so both can be resumed.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import link, results, units
from orchestrator.errors import SpecError, UserError
from orchestrator.run import Run, RunConfig
from orchestrator.scenario import FlowSpec, Scenario
from orchestrator.testbed import Testbed


class Mix(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    l4s: int = Field(0, ge=0, le=64)
    classic: int = Field(0, ge=0, le=64)
    cc: str = "cubic"  # classic flows' congestion control
    udp: int = Field(0, ge=0, le=8)  # unresponsive Not-ECT UDP flows
    udp_share: float = Field(0.3, gt=0, le=2.0)  # their total rate, as a share of the link


class Matrix(BaseModel):
    model_config = ConfigDict(extra="forbid")
    duration: str = "15s"
    seed: int = 1
    datapath: str = "nfqueue"
    behaviours: list[str] = ["dualpi2", "pie", "pi2", "red", "codel"]
    exploration: dict[str, float] = {"epsilon": 0.2, "spread": 4.0, "hold": 4}
    rate: list[str] = ["10mbit", "50mbit", "100mbit"]
    rtt: list[str] = ["5ms", "20ms", "50ms", "100ms"]
    buffer: list[str | int] = ["1.5bdp", "4bdp"]
    mixes: list[Mix]
    sample: int = Field(16, ge=0)  # scenarios drawn from the cross product (0: all)
    held_out: int = Field(3, ge=0)  # of those, kept out of the pool for evaluation


def load_matrix(path: str | Path) -> Matrix:
    from orchestrator.spec import _message, key_path

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SpecError(str(path), "", f"cannot read the matrix: {e}") from None
    try:
        matrix = Matrix.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise SpecError(str(path), key_path(err["loc"]), _message(err)) from None
    for i, rate in enumerate(matrix.rate):
        _check(path, f"rate[{i}]", units.rate_bps, rate)
    for i, rtt in enumerate(matrix.rtt):
        _check(path, f"rtt[{i}]", units.seconds, rtt)
    if matrix.held_out >= max(matrix.sample, 1) and matrix.sample:
        raise SpecError(str(path), "held_out", "expected fewer held-out scenarios than 'sample'")
    return matrix


def _check(path: str | Path, key: str, parse: Callable[[Any], float], value: Any) -> None:
    try:
        if parse(value) <= 0:
            raise ValueError(f"expected a positive value, got {value!r}")
    except ValueError as e:
        raise SpecError(str(path), key, str(e)) from None


def plan(matrix: Matrix) -> list[dict[str, Any]]:
    """Scenario points: name, link settings, mix, behaviour, and whether it is held out."""
    rng = random.Random(matrix.seed)
    grid = list(itertools.product(matrix.rate, matrix.rtt, matrix.buffer, matrix.mixes))
    if matrix.sample:
        grid = rng.sample(grid, min(matrix.sample, len(grid)))
    held = set(rng.sample(range(len(grid)), min(matrix.held_out, len(grid))))
    out = []
    for i, (rate, rtt, buffer, mix) in enumerate(grid):
        out.append({"name": f"{rate}-{rtt}-{buffer}-{mix.name}", "rate": rate, "rtt": rtt,
                    "buffer": buffer, "mix": mix.model_dump(), "held_out": i in held,
                    "behaviour": matrix.behaviours[i % len(matrix.behaviours)], "seed": matrix.seed + i,
                    "run": None})
    return out


def flows_for(point: dict[str, Any], tb: Testbed) -> list[FlowSpec]:
    """The mix's flows, spread over the testbed's senders and receivers."""
    mix = Mix.model_validate(point["mix"])
    senders = [h.name for h in tb.hosts.values() if h.role == "sender"]
    receivers = [h.name for h in tb.hosts.values() if h.role == "receiver"]
    flows: list[FlowSpec] = []
    kinds = ([("l4s", {})] * mix.l4s + [("tcp", {"cc": mix.cc})] * mix.classic)
    udp_rate = units.rate_bps(point["rate"]) * mix.udp_share / max(mix.udp, 1)
    kinds += [("udp", {"rate": f"{udp_rate / 1e3:.0f}kbit", "ecn": "not-ect"})] * mix.udp
    for i, (kind, extra) in enumerate(kinds):
        flows.append(FlowSpec(name=f"{kind}{i}", kind=kind, src=senders[i % len(senders)],
                              dst=receivers[i % len(receivers)], start=f"{0.1 * i:.1f}s", **extra))
    return flows


def scenario_of(point: dict[str, Any], tb: Testbed, duration: str) -> Scenario:
    return Scenario(name=point["name"], duration=duration, flows=flows_for(point, tb))


def _state(out: Path) -> dict[str, Any]:
    return results.read_json(out / "collect.json")


def _save(out: Path, state: dict[str, Any]) -> None:
    results.write_json(out / "collect.json", state)


def start(matrix_path: str | Path, out: Path) -> dict[str, Any]:
    """Create (or reopen, to resume) a collection directory."""
    if (out / "collect.json").exists():
        return _state(out)
    matrix = load_matrix(matrix_path)
    out.mkdir(parents=True, exist_ok=True)
    state = {"matrix": matrix.model_dump(), "points": plan(matrix), "evaluations": []}
    _save(out, state)
    return state


def _on_link(tb: Testbed, point: dict[str, Any], fn: Callable[[], Path]) -> Path:
    saved = (tb.bottleneck.rate_bps, tb.bottleneck.rtt_s, tb.extra.get("buffer_spec"))
    link.reconfigure(tb, rate_bps=units.rate_bps(point["rate"]), rtt_s=units.seconds(point["rtt"]),
                     buffer=point["buffer"])
    try:
        return fn()
    finally:
        link.reconfigure(tb, rate_bps=saved[0], rtt_s=saved[1], buffer=saved[2])


def collect(tb: Testbed, out: Path, progress: Callable[[str, float], None] | None = None) -> Path:
    """Run every training scenario not yet run; write <out>/pool.parquet."""
    from policies.aqm_llm.dataset import build_pool

    state = _state(out)
    matrix = Matrix.model_validate(state["matrix"])
    for i, point in enumerate(state["points"]):
        if point["held_out"] or point["run"]:
            continue
        config = RunConfig(policy=point["behaviour"], datapath=matrix.datapath, seed=point["seed"],
                           results_root=out / "runs", explore=matrix.exploration,
                           label={"scenario": point["name"]})
        run = Run(tb, scenario_of(point, tb, matrix.duration), config)
        run_dir = _on_link(tb, point, lambda run=run: run.execute(progress))
        state["points"][i]["run"] = run_dir.name
        _save(out, state)
    runs = [out / "runs" / p["run"] for p in state["points"] if p["run"] and not p["held_out"]]
    if not runs:
        raise UserError("no training runs: every scenario is held out")
    return build_pool(runs, out / "pool.parquet")


def evaluate(tb: Testbed, out: Path, policies: list[tuple[str, dict[str, Any]]], repeat: int,
             progress: Callable[[str, float], None] | None = None) -> list[dict[str, Any]]:
    """Run each policy on each held-out scenario `repeat` times; return one row per run."""
    state = _state(out)
    matrix = Matrix.model_validate(state["matrix"])
    done = {(e["scenario"], e["policy"], e["repeat"]): e for e in state["evaluations"]}
    for point in (p for p in state["points"] if p["held_out"]):
        for (name, args), rep in itertools.product(policies, range(repeat)):
            if (point["name"], name, rep) in done:
                continue
            config = RunConfig(policy=name, policy_args=args, datapath=matrix.datapath,
                               seed=1000 + rep, results_root=out / "eval",
                               label={"scenario": point["name"], "repeat": rep})
            run = Run(tb, scenario_of(point, tb, matrix.duration), config)
            run_dir = _on_link(tb, point, lambda run=run: run.execute(progress))
            entry = {"scenario": point["name"], "policy": name, "repeat": rep, "run": run_dir.name}
            state["evaluations"].append(entry)
            done[(point["name"], name, rep)] = entry
            _save(out, state)
    return [e for e in state["evaluations"] if any(e["policy"] == n for n, _ in policies)]


def table(out: Path, rows: list[dict[str, Any]]) -> Any:
    """Per policy: mean and spread (std over runs) of the columns the evaluation reports."""
    import pandas as pd

    records = []
    for row in rows:
        path = out / "eval" / row["run"] / "summary.json"
        if not path.exists():
            continue
        s = results.read_json(path)
        qd = s.get("queue_delay_ms") or {}
        lq, cq = qd.get("l4s") or {}, qd.get("classic") or {}
        records.append({"policy": row["policy"], "scenario": row["scenario"],
                        "l4s_p50": lq.get("p50"), "l4s_p99": lq.get("p99"),
                        "c_p50": cq.get("p50"), "c_p99": cq.get("p99"),
                        "utilization": s.get("utilization"), "jain": s.get("jain_index"),
                        "l4s_c_ratio": s.get("l4s_classic_rate_ratio"),
                        "missed": s.get("missed_deadlines") or 0})
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return frame
    cols = ["l4s_p50", "l4s_p99", "c_p50", "c_p99", "utilization", "jain", "l4s_c_ratio", "missed"]
    frame[cols] = frame[cols].astype(float)
    agg = frame.groupby("policy")[cols].agg(["mean", "std"])
    agg["runs"] = frame.groupby("policy").size()
    return agg
