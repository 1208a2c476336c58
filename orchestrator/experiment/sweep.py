"""A Sweep: the cross product of a scenario's `sweep` lists, with repetitions, resumable.

The sweep's directory holds `sweep.json` (every point, its seed, its run directory and status)
and the runs themselves. `testbed run --resume DIR` runs only the points not yet complete.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from orchestrator.experiment import results
from orchestrator.experiment.points import PointFile, run_point
from orchestrator.experiment.run import Progress, Run, RunConfig
from orchestrator.spec.scenario import Scenario
from orchestrator.testbed.base import Testbed


def points(sweep: dict[str, list[Any]], repeat: int, seed: int) -> list[dict[str, Any]]:
    keys = sorted(sweep)
    out = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        for rep in range(repeat):
            out.append({"point": dict(zip(keys, values, strict=True)), "repeat": rep, "seed": seed + rep,
                        "run": None, "status": "pending"})
    return out


def create(root: Path, scenario: Scenario, base: RunConfig, repeat: int) -> Path:
    sweep_dir = root / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir.mkdir(parents=True)
    results.write_json(sweep_dir / "sweep.json", {
        "scenario": scenario.model_dump(mode="json"), "scenario_source": scenario._source,
        "base": {"policy": base.policy, "datapath": base.datapath, "policy_args": base.policy_args,
                 "duration_s": base.duration_s},
        "points": points(scenario.sweep or {"policy": [base.policy]}, repeat, base.seed)})
    return sweep_dir


def pending(sweep_dir: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, p in enumerate(PointFile(sweep_dir / "sweep.json").points()):
        if p["status"] != "complete":
            yield i, p


def execute(tb: Testbed, sweep_dir: Path, progress: Progress | None = None,
            on_run: Callable[[Path], None] | None = None,
            on_warning: Callable[[str], None] | None = None) -> list[Path]:
    """Run every pending point, each on the link it sets (the testbed's own link after)."""
    points = PointFile(sweep_dir / "sweep.json")
    data = points.read()
    scenario = Scenario.model_validate(data["scenario"])
    scenario._source = data.get("scenario_source", "")
    base = data["base"]
    done = []
    for i, p in pending(sweep_dir):
        point = p["point"]
        config = RunConfig(policy=point.get("policy", base["policy"]),
                           datapath=point.get("datapath", base["datapath"]),
                           policy_args=base["policy_args"], duration_s=base["duration_s"],
                           seed=p["seed"], results_root=sweep_dir, label=point)
        # a swept link mapping stands in for the scenario's own `link:`
        here = scenario.model_copy(update={"link": point["link"]}) if "link" in point else scenario
        here._source = scenario._source
        run = Run(tb, here, config)
        for warning in run.warnings if on_warning else ():
            on_warning(warning)
        run_dir = run_point(points, i, run, point, progress)
        done.append(run_dir)
        if on_run:
            on_run(run_dir)
    return done
