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

from pydantic import BaseModel, ConfigDict, Field

import policies
from orchestrator.bottleneck import DEFAULT_DATAPATH
from orchestrator.errors import POLICY_ERRORS, SpecError, UserError
from orchestrator.experiment import results
from orchestrator.experiment.points import LINK_KEYS, PointFile, is_complete, run_point
from orchestrator.experiment.run import Run, RunConfig
from orchestrator.spec import units
from orchestrator.spec.load import load_model
from orchestrator.spec.scenario import FlowSpec, Scenario
from orchestrator.testbed.base import Testbed


class Mix(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    l4s: int = Field(0, ge=0, le=64)
    classic: int = Field(0, ge=0, le=64)
    cc: str = "cubic"  # classic flows' congestion control
    udp: int = Field(0, ge=0, le=8)  # unresponsive Not-ECT UDP flows
    udp_share: float = Field(0.3, gt=0, le=2.0)  # their total rate, as a share of the link


class Dynamic(BaseModel):
    """How the link changes in a scenario: a schedule relative to the point's own rate and RTT
    (factors at times), a trace (relative to the matrix file), random loss; or nothing."""

    model_config = ConfigDict(extra="forbid")
    name: str
    rate_factors: list[tuple[str, float]] | None = None  # [(time, factor of the point's rate)]
    rtt_factors: list[tuple[str, float]] | None = None
    trace: str | None = None
    loss: str | float | dict[str, Any] | None = None

    def link(self, rate: str, rtt: str) -> dict[str, Any]:
        """The link mapping (spec/dynamic.py) for a point's rate and RTT."""
        out: dict[str, Any] = {}
        if self.rate_factors:
            bps = units.rate_bps(rate)
            out["rate"] = [{"at": t, "rate": f"{bps * f:.0f}bit"} for t, f in self.rate_factors]
        if self.rtt_factors:
            ms = units.seconds(rtt) * 1e3
            out["rtt"] = [{"at": t, "rtt": f"{ms * f:.3f}ms"} for t, f in self.rtt_factors]
        if self.trace:
            out["trace"] = self.trace
        if self.loss is not None:
            out["loss"] = self.loss
        return out


class Matrix(BaseModel):
    model_config = ConfigDict(extra="forbid")
    duration: str = "15s"
    seed: int = 1
    datapath: str = DEFAULT_DATAPATH
    behaviours: list[str] = ["dualpi2", "pie", "pi2", "red", "codel"]
    exploration: dict[str, float] = {"epsilon": 0.2, "spread": 4.0, "hold": 4}
    rate: list[str] = ["10mbit", "50mbit", "100mbit"]
    rtt: list[str] = ["5ms", "20ms", "50ms", "100ms"]
    buffer: list[str | int] = ["1.5bdp", "4bdp"]
    mixes: list[Mix]
    dynamics: list[Dynamic] = [Dynamic(name="static")]  # links that change during the run
    sample: int = Field(16, ge=0)  # scenarios drawn from the cross product (0: all)
    held_out: int = Field(3, ge=0)  # of those, kept out of the pool for evaluation
    # every behaviour in DualQ, coupled as DualPI2 (policies/coupled.py), as AQM-LLM is
    # deployed (issue 14, item 5); false keeps the recipes collected before it reproducible
    dualq: bool = False


# RED's thresholds as a share of the point's BDP, i.e. of its base RTT in queue delay: Floyd
# ("RED: Discussions of Setting Parameters", 1997) puts max_th at 3 x min_th, and with min_th
# at 0.2 BDP the gentle ramp ends at 2 max_th = 1.2 BDP, inside the matrices' smallest buffer
# (1.5 BDP), so RED and not the tail drop holds the queue.
RED_MIN_BDP, RED_MAX_OVER_MIN = 0.2, 3.0


def behaviour_args(name: str, rtt: str, dualq: bool) -> dict[str, Any]:
    """A behaviour's parameters at a scenario point: RED's thresholds from the point's BDP, and
    `dualq` for a single-queue AQM when the matrix asks for DualQ (load_matrix checked it can)."""
    args: dict[str, Any] = {}
    if name == "red":
        min_ms = RED_MIN_BDP * units.seconds(rtt) * 1e3
        args |= {"min_ms": round(min_ms, 6), "max_ms": round(RED_MAX_OVER_MIN * min_ms, 6)}
    if dualq and not policies.make(name, {}).queue_config().dualq:
        args["dualq"] = True
    return args


def _check_dualq(path: str | Path, i: int, name: str) -> None:
    """With `dualq: true`, a behaviour must run in DualQ already (DualPI2) or take `dualq`."""
    policy = policies.make(name, {})
    if policy.queue_config().dualq or "dualq" in {f[0] for f in policy.Params.describe()}:
        return
    why = ("acts per packet at dequeue, so it has no probability to couple the L queue to"
           if policy.per_packet else "has no DualQ form (no 'dualq' parameter)")
    raise SpecError(str(path), f"behaviours[{i}]", f"{name!r} {why}: with 'dualq: true' remove "
                    "it, or set 'dualq: false'")


def load_matrix(path: str | Path) -> Matrix:
    matrix = load_model(path, Matrix, what="a matrix (a mapping)")
    for i, rate in enumerate(matrix.rate):
        _check(path, f"rate[{i}]", units.bounded_rate, rate)
    for i, rtt in enumerate(matrix.rtt):
        _check(path, f"rtt[{i}]", units.bounded_delay, rtt)
    for i, buffer in enumerate(matrix.buffer):
        _check(path, f"buffer[{i}]", lambda v: units.buffer_size(v, 1e6, 0.02)[0], buffer)
    for i, name in enumerate(matrix.behaviours):
        # a policy name is checked here, naming the file, before any folder is made
        try:
            policies.make(name, {})
        except POLICY_ERRORS as e:
            raise SpecError(str(path), f"behaviours[{i}]", str(e)) from None
        if matrix.dualq:
            _check_dualq(path, i, name)
    if not matrix.behaviours:
        raise SpecError(str(path), "behaviours", "expected at least one policy")
    from orchestrator.spec.dynamic import check_mapping, with_absolute_trace

    for i, dyn in enumerate(matrix.dynamics):
        if dyn.trace:
            matrix.dynamics[i] = dyn = dyn.model_copy(update={
                "trace": with_absolute_trace({"trace": dyn.trace}, Path(path).parent)["trace"]})
        check_mapping(dyn.link(matrix.rate[0], matrix.rtt[0]), "/", str(path), f"dynamics[{i}].")
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
    from orchestrator.spec.dynamic import parse

    grid = list(itertools.product(matrix.rate, matrix.rtt, matrix.buffer, matrix.mixes, matrix.dynamics))
    if matrix.sample:
        grid = rng.sample(grid, min(matrix.sample, len(grid)))
    held = _held_out(rng, ["changing" if dyn.link(r, t) else "static" for r, t, *_, dyn in grid],
                     matrix.held_out)
    out = []
    for i, (rate, rtt, buffer, mix, dyn) in enumerate(grid):
        link_map = dyn.link(rate, rtt)
        dynamics = parse(link_map) if link_map else None
        if dynamics is not None and dynamics.varies_rate:  # the static parts use its nominal rate
            rate = units.fmt_rate(dynamics.nominal_rate_bps())
        suffix = "" if dynamics is None else f"-{dyn.name}"
        out.append({"name": f"{rate}-{rtt}-{buffer}-{mix.name}{suffix}", "rate": rate, "rtt": rtt,
                    "buffer": buffer, "mix": mix.model_dump(), "held_out": i in held,
                    "behaviour": (name := matrix.behaviours[i % len(matrix.behaviours)]),
                    "behaviour_args": behaviour_args(name, rtt, matrix.dualq), "seed": matrix.seed + i,
                    "link_dynamics": dynamics.to_json() if dynamics is not None else None, "run": None})
    return out


def _held_out(rng: random.Random, dynamics: list[str], count: int) -> set[int]:
    """Which grid points are held out. With one kind of link, a plain sample (as the shipped
    recipes were drawn). With static and changing links, in turn from each kind, so that the
    evaluation covers both whatever the draw; a kind with no points left is skipped."""
    kinds = list(dict.fromkeys(dynamics))
    if len(kinds) < 2:
        return set(rng.sample(range(len(dynamics)), min(count, len(dynamics))))
    pools = {k: [i for i, d in enumerate(dynamics) if d == k] for k in kinds}
    for members in pools.values():
        rng.shuffle(members)
    held: set[int] = set()
    while len(held) < min(count, len(dynamics)):
        for k in kinds:
            if pools[k] and len(held) < count:
                held.add(pools[k].pop())
    return held


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


def start(matrix_path: str | Path, out: Path, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Create (or reopen, to resume) a collection directory."""
    if (out / "collect.json").exists():
        return _state(out)
    matrix = load_matrix(matrix_path)
    out.mkdir(parents=True, exist_ok=True)
    state = {"matrix": matrix.model_dump(), "points": plan(matrix), "evaluations": [],
             "shard": list(shard)}
    _save(out, state)
    return state


def _no_override(point: dict[str, Any]) -> dict[str, Any]:
    """The point's dynamics; an empty mapping (not None) for a static point, so the run does
    not pick up the testbed file's own schedule: the matrix says what every point's link is."""
    return point.get("link_dynamics") or {}


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N): this machine runs shard I (0-based) of N. ValueError says the form."""
    head, sep, tail = text.partition("/")
    if not sep or not head.strip().isdigit() or not tail.strip().isdigit():
        raise ValueError(f"expected I/N with whole numbers, like 0/4, got {text!r}")
    i, n = int(head), int(tail)
    if not 0 <= i < n:
        raise ValueError(f"expected 0 <= I < N, got {text!r}")
    return i, n


def in_shard(index: int, shard: tuple[int, int]) -> bool:
    """Point `index` of the plan belongs to shard (I, N) when index % N == I. Every machine
    plans the same matrix with the same seed, so the shards partition the points exactly."""
    return index % shard[1] == shard[0]


def collect(tb: Testbed, out: Path, progress: Callable[[str, float], None] | None = None,
            shard: tuple[int, int] = (0, 1)) -> Path:
    """Run every training scenario of this shard not yet run; write <out>/pool.parquet (the
    shard's pool; `testbed pool build` merges the shards' pools)."""
    from policies.aqm_llm.dataset import build_pool

    points = PointFile(out / "collect.json")
    state = points.read()
    matrix = Matrix.model_validate(state["matrix"])
    recorded = state.get("shard")
    if recorded is not None and tuple(recorded) != shard:
        raise UserError(f"{out}: collected as shard {recorded[0]}/{recorded[1]}, not {shard[0]}/{shard[1]}; "
                        "use another --out for another shard")
    for i, point in enumerate(state["points"]):
        if not to_collect(i, point, shard):
            continue
        # behaviour_args: absent in plans made before issue 14 item 5 (their behaviours ran bare)
        config = RunConfig(policy=point["behaviour"], policy_args=point.get("behaviour_args", {}),
                           datapath=matrix.datapath, seed=point["seed"],
                           results_root=out / "runs", explore=matrix.exploration,
                           label={"scenario": point["name"]}, link_dynamics=_no_override(point))
        run_point(points, i, Run(tb, scenario_of(point, tb, matrix.duration), config), _link(point),
                  progress)
    runs = [out / "runs" / p["run"] for i, p in enumerate(points.points())
            if is_complete(p) and not p["held_out"] and in_shard(i, shard)]
    if not runs:
        raise UserError("no training runs: every scenario of this shard is held out")
    return build_pool(runs, out / "pool.parquet")


def to_collect(index: int, point: dict[str, Any], shard: tuple[int, int]) -> bool:
    """A training point of this shard that has not run yet."""
    return not point["held_out"] and not is_complete(point) and in_shard(index, shard)


def evaluate(tb: Testbed, out: Path, policies: list[tuple[str, dict[str, Any]]], repeat: int,
             progress: Callable[[str, float], None] | None = None) -> list[dict[str, Any]]:
    """Run each policy on each held-out scenario `repeat` times; return one row per run."""
    evaluations = PointFile(out / "collect.json", key="evaluations")
    state = evaluations.read()
    matrix = Matrix.model_validate(state["matrix"])
    done = {(e["scenario"], e["policy"], e["repeat"]) for e in state["evaluations"] if is_complete(e)}
    labels = [spec_label(name, args) for name, args in policies]
    for point in (p for p in state["points"] if p["held_out"]):
        runs = itertools.product(zip(policies, labels, strict=True), range(repeat))
        for ((name, args), label), rep in runs:
            if (point["name"], label, rep) in done:
                continue
            config = RunConfig(policy=name, policy_args=args, datapath=matrix.datapath,
                               seed=1000 + rep, results_root=out / "eval",
                               label={"scenario": point["name"], "repeat": rep},
                               link_dynamics=_no_override(point))
            run = Run(tb, scenario_of(point, tb, matrix.duration), config)
            index = evaluations.append({"scenario": point["name"], "policy": label, "repeat": rep,
                                        "run": None, "status": "pending"})
            run_point(evaluations, index, run, _link(point), progress)
            done.add((point["name"], label, rep))
    return [e for e in evaluations.points() if is_complete(e) and e["policy"] in labels]


def spec_label(name: str, args: dict[str, Any]) -> str:
    """How an evaluated policy is named in collect.json and the table: its name, with its
    arguments when it has any, so that two settings of one policy (the shipped student and
    another checkpoint) are two rows, not one row whose second half was never run."""
    if not args:
        return name
    return name + ":" + ",".join(f"{k}={args[k]}" for k in sorted(args))


def _link(point: dict[str, Any]) -> dict[str, Any]:
    """A scenario point's link settings (every point of a matrix sets all three)."""
    return {k: point[k] for k in LINK_KEYS}


COLUMNS = ["l4s_p50", "l4s_p99", "c_p50", "c_p99", "utilization", "jain", "l4s_c_ratio", "missed"]


def records(out: Path, rows: list[dict[str, Any]]) -> Any:
    """One row per evaluation run: its scenario, whether the link changed, the policy, and the
    figures the evaluation reports (from the run's summary.json)."""
    import pandas as pd

    points = {p["name"]: p for p in PointFile(out / "collect.json").points()}
    found = []
    for row in rows:
        path = out / "eval" / row["run"] / "summary.json"
        if not path.exists():
            continue
        s = results.read_json(path)
        qd = s.get("queue_delay_ms") or {}
        lq, cq = qd.get("l4s") or {}, qd.get("classic") or {}
        point = points.get(row["scenario"], {})
        link = "changing" if point.get("link_dynamics") else "static"
        found.append({"link": link, "policy": row["policy"], "scenario": row["scenario"],
                      "l4s_p50": lq.get("p50"), "l4s_p99": lq.get("p99"),
                      "c_p50": cq.get("p50"), "c_p99": cq.get("p99"),
                      "utilization": s.get("utilization"), "jain": s.get("jain_index"),
                      "l4s_c_ratio": s.get("l4s_classic_rate_ratio"),
                      "missed": s.get("missed_deadlines") or 0})
    frame = pd.DataFrame.from_records(found)
    if not frame.empty:
        frame[COLUMNS] = frame[COLUMNS].astype(float)
    return frame


def table(frame: Any, keys: tuple[str, ...] = ("link", "policy")) -> Any:
    """Mean and spread (std over runs) of each column per group. By default static and changing
    links apart: a learned AQM is meant to win on the second, and one mean over both would hide
    where it wins or loses; ("scenario", "policy") gives the per-scenario view."""
    if frame.empty:
        return frame
    agg = frame.groupby(list(keys))[COLUMNS].agg(["mean", "std"])
    agg["runs"] = frame.groupby(list(keys)).size()
    return agg
