"""A crosscheck: one scenario and policy on every datapath that can run it here, repeated.

It is a sweep over `datapath` (plus the link it sets: rate, rtt, buffer), so it resumes like
one (`sweep.json` in its directory; `testbed crosscheck --resume DIR` runs only the points
not yet complete). A datapath that cannot run the policy on this testbed (the kernel datapath
without the qdisc, dummynet without a FreeBSD router) is skipped with its own reason, never
silently. The analysis is `orchestrator/analysis/crosscheck.py`; the result goes to
`crosscheck.json` and `crosscheck.csv` in the directory.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from orchestrator import bottleneck
from orchestrator.analysis import crosscheck as xc
from orchestrator.errors import UserError, policy_errors
from orchestrator.experiment import results, sweep
from orchestrator.experiment.points import PointFile, is_complete
from orchestrator.experiment.run import Progress, RunConfig
from orchestrator.spec.scenario import Scenario
from orchestrator.testbed.base import Testbed

CANDIDATES = ("nfqueue", "ebpf", "kernel", "dummynet")


def runnable(tb: Testbed, config: RunConfig, names: tuple[str, ...] = CANDIDATES
             ) -> tuple[list[str], dict[str, str]]:
    """(datapaths that can run the policy here, {datapath: why not} for the others)."""
    import policies

    with policy_errors():
        policy = policies.make(config.policy, config.policy_args)
    ok, skipped = [], {}
    for name in names:
        why = bottleneck.datapath_class(name)(tb).unsupported(policy)
        if why:
            skipped[name] = why
        else:
            ok.append(name)
    return ok, skipped


def create(tb: Testbed, root: Path, scenario: Scenario, config: RunConfig, repeat: int,
           link: dict[str, Any], names: tuple[str, ...] = CANDIDATES) -> Path:
    """The crosscheck directory with every point pending; raises if fewer than two datapaths
    can run the policy (nothing to compare)."""
    ok, skipped = runnable(tb, config, names)
    if len(ok) < 2:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise UserError(f"crosscheck needs two datapaths that run {config.policy!r}; "
                        f"only {ok or 'none'} can here ({reasons})")
    directory = root / f"crosscheck-{time.strftime('%Y%m%d-%H%M%S')}"
    directory.mkdir(parents=True)
    grid = {"datapath": ok, **{k: [v] for k, v in link.items()}}
    results.write_json(directory / "sweep.json", {
        "kind": "crosscheck", "scenario": scenario.model_dump(mode="json"),
        "base": {"policy": config.policy, "datapath": ok[0], "policy_args": config.policy_args,
                 "duration_s": config.duration_s},
        "link": link, "datapaths": ok, "skipped": skipped,
        # datapath-major, repetitions interleaved: a crosscheck cut short still has both sides
        "points": _interleaved(sweep.points(grid, repeat, config.seed))})
    return directory


def _interleaved(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(points, key=lambda p: p["repeat"])


def execute(tb: Testbed, directory: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Run what is pending, then analyse and write crosscheck.json/.csv; return the result."""
    sweep.execute(tb, directory, progress)
    return analyse(directory)


def analyse(directory: Path) -> dict[str, Any]:
    """The comparison of the complete runs of a crosscheck directory (also a partial one)."""
    state = PointFile(directory / "sweep.json").read()
    runs = [xc.run_figures(directory / p["run"]) for p in state["points"]
            if is_complete(p) and p.get("run") and (directory / p["run"]).is_dir()]
    result = xc.compare(runs, state["datapaths"])
    result.update(policy=state["base"]["policy"], link=state.get("link", {}),
                  skipped=state.get("skipped", {}), runs=[r.run for r in runs],
                  tolerances={k: list(v) for k, v in xc.TOLERANCES.items()})
    results.write_json(directory / "crosscheck.json", _clean(result))
    rows = xc.table_rows(result)
    with open(directory / "crosscheck.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["datapath", "figure", "mean", "min", "max"])
        writer.writeheader()
        writer.writerows(rows)
    return result


def _clean(value: Any) -> Any:
    from orchestrator.analysis.summary import clean

    return clean(value)
