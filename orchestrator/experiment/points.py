"""The one resumable point runner that sweep, collect and evaluate share.

A series of runs keeps its points in a JSON file next to the runs (each point: its settings,
`run` and `status`), so a series that stopped (Ctrl-C, a lost host) resumes where it was:
only points not yet `complete` run again. A point may set the link (rate, rtt, buffer as a
spec writes them); `link_settings` applies them for that run and gives the testbed its own
link back afterwards, whatever happened.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.bottleneck import access_delay, shaping
from orchestrator.experiment import results
from orchestrator.experiment.run import Progress, Run
from orchestrator.spec import units
from orchestrator.testbed.base import Testbed

LINK_KEYS = ("rate", "rtt", "buffer")


@contextmanager
def link_settings(tb: Testbed, point: Mapping[str, Any]) -> Iterator[None]:
    """The bottleneck as `point` sets it (any of rate, rtt, buffer) and the access delays it
    names (`delay.<host>`: per-flow RTTs) for the block."""
    saved_delays = access_delay.apply(tb, dict(point))
    try:
        with _bottleneck(tb, point):
            yield
    finally:
        access_delay.restore(tb, saved_delays)


@contextmanager
def _bottleneck(tb: Testbed, point: Mapping[str, Any]) -> Iterator[None]:
    if not any(k in point for k in LINK_KEYS):
        yield
        return
    bn = tb.bottleneck
    saved = (bn.rate_bps, bn.rtt_s, tb.extra.get("buffer_spec"))
    shaping.reconfigure(tb, rate_bps=units.rate_bps(point["rate"]) if "rate" in point else None,
                        rtt_s=units.seconds(point["rtt"]) if "rtt" in point else None,
                        buffer=point.get("buffer"))
    try:
        yield
    finally:
        shaping.reconfigure(tb, rate_bps=saved[0], rtt_s=saved[1], buffer=saved[2])


def is_complete(point: Mapping[str, Any]) -> bool:
    """Points of older state files have a `run` but no `status`: those ran to the end."""
    return point.get("status") == "complete" or ("status" not in point and bool(point.get("run")))


class PointFile:
    """The JSON state of a series: a dict whose `key` lists the points."""

    def __init__(self, path: Path, key: str = "points") -> None:
        self.path, self.key = path, key

    def read(self) -> dict[str, Any]:
        return results.read_json(self.path)

    def write(self, state: dict[str, Any]) -> None:
        results.write_json(self.path, state)

    def points(self) -> list[dict[str, Any]]:
        return self.read()[self.key]

    def set(self, index: int, **values: Any) -> None:
        state = self.read()
        state[self.key][index].update(values)
        self.write(state)

    def append(self, point: dict[str, Any]) -> int:
        state = self.read()
        state[self.key].append(point)
        self.write(state)
        return len(state[self.key]) - 1


def run_point(points: PointFile, index: int, run: Run, link: Mapping[str, Any],
              progress: Progress | None = None) -> Path:
    """Run point `index` (its Run is built and checked by the caller) on the link it sets;
    record its run directory and status (also when it is aborted, so the series shows what
    happened). Returns the run directory."""
    with link_settings(run.tb, link):
        try:
            run_dir = run.execute(progress)
        except BaseException:
            if run.dir is not None:
                points.set(index, run=run.dir.name, status="aborted")
            raise
    points.set(index, run=run_dir.name, status="complete")
    return run_dir
