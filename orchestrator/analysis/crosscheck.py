"""Do two datapaths give the same answer? Figures of a crosscheck directory, side by side.

A crosscheck (`orchestrator/experiment/crosscheck.py`) runs one scenario and policy on several
datapaths, each repeated. Here, per datapath: utilisation, per-class delay percentiles, mark
and drop rates and the L4S/classic rate ratio (mean and range over the repetitions); per
class and pair of datapaths: the Wasserstein-1 distance (ms) and the Kolmogorov-Smirnov
statistic of the per-packet sojourn distributions (repetitions pooled), next to the same
distances between repetitions of one datapath (its run-to-run spread, the yardstick).

The verdict compares each datapath with the reference (the first) on the figures of
TOLERANCES. Why each tolerance is what it is (measured on this machine, 2 loaded cores,
default testbed 50 Mbit/s, 20 ms, L4S + CUBIC, 10-15 s runs, DualPI2; README "Crosscheck"):

- utilisation, 0.02 absolute on the means: one datapath against itself spread 0.93-0.955
  (nfqueue, 10 s runs; its releases run late when the machine is busy) and 0.95-0.98 (ebpf);
  the means differed by 0.005-0.017 once the datapaths agreed. A datapath that shapes 2% off
  its rate is a real difference (the link is the experiment's denominator).
- classic p50 delay, 30% of the reference: CUBIC's sawtooth against PI2 moved the classic
  median between runs of one datapath by up to 25% (nfqueue 7.5-10.3 ms, ebpf 8.3-12.8 ms).
- L4S p99 delay, 0.5 ms or two full-size packets at the link rate, whichever is larger: the
  figure the L queue exists for. 0.5 ms is two packets at 50 Mbit/s and half the 1 ms step;
  the p99 of an L queue kept near one step is set by a packet or two waiting behind the
  packet in service, so at 10 Mbit/s (1.2 ms a packet) the same disagreement is 2.4 ms.
  Run-to-run spread of one datapath: 0.1-0.25 ms at 50 Mbit/s, 0.1-1.1 ms at 10 Mbit/s.
  The old ebpf shape was 0.55-0.65 ms off at 50 Mbit/s and 4 ms off at 10 Mbit/s.
- L4S/classic rate ratio, 35% of the reference: one 10 s run of two flows moved the ratio by
  up to 30% on one datapath (0.70-0.96 nfqueue, 0.72-1.18 ebpf: who wins the first
  seconds); a datapath that halves or doubles the L4S share is caught (the old ebpf shape:
  0.21 against 0.05 at 10 Mbit/s).
- Each of the four above is widened to the larger of the two datapaths' own ranges over their
  repetitions (max - min): a gap between the means no wider than what one datapath shows
  against itself cannot be told from repetition noise. Seen in CI: classic p50 nfqueue 9.1,
  ebpf 12.1 ms (2 runs each, ebpf alone spreads 8.3-12.8 ms), which the bare 30% called a
  difference while the classic W1 (2.2 <= 2.8 ms) agreed.
- W1 of a class's sojourn distribution: at most max(floor, 3 x the larger self-W1 of the two
  datapaths) (floors 0.2 ms L4S, 2 ms classic, for single runs): a distance three times what
  repetition alone gives is a difference of mechanism, not noise. L4S self-W1 was 0.006-0.03
  ms at 50 Mbit/s; the old ebpf shape was 0.29-0.30 ms away.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis import queue
from orchestrator.analysis.rundir import RunDir, load_json
from policies.base import CLASSES

# figure -> (kind, tolerance): 'abs' |a - b| <= tol, 'rel' |a - b| <= tol * |reference|
TOLERANCES: dict[str, tuple[str, float]] = {
    "utilisation": ("abs", 0.02),
    "classic_p50_ms": ("rel", 0.30),
    "l4s_p99_ms": ("abs", 0.5),
    "rate_ratio": ("rel", 0.35),
}
# or this many full-size packets' serialisation at the link rate, if that is larger
PACKETS_TOLERANCE = {"l4s_p99_ms": 2}
WIRE_MTU = 1514
W1_FLOOR_MS = {"l4s": 0.2, "classic": 2.0}
W1_NOISE_FACTOR = 3.0
FIGURES = ("utilisation", "l4s_p50_ms", "l4s_p99_ms", "classic_p50_ms", "classic_p99_ms",
           "l4s_mark_rate", "l4s_drop_rate", "classic_mark_rate", "classic_drop_rate",
           "rate_ratio", "l4s_mbps", "classic_mbps", "link_mbps")


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between the empirical distributions of `a` and `b`: the integral of |F_a - F_b|."""
    if a.size == 0 or b.size == 0:
        return math.nan
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    grid.sort(kind="mergesort")
    fa = np.searchsorted(a, grid[:-1], side="right") / a.size
    fb = np.searchsorted(b, grid[:-1], side="right") / b.size
    return float(np.sum(np.abs(fa - fb) * np.diff(grid)))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: sup |F_a - F_b| over every sample point."""
    if a.size == 0 or b.size == 0:
        return math.nan
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


@dataclass
class RunFigures:
    """One repetition on one datapath."""

    datapath: str
    run: str
    figures: dict[str, float]
    sojourn: dict[str, np.ndarray] = field(default_factory=dict)


def run_figures(run_dir: Path) -> RunFigures:
    """The figures of one run, from its telemetry and summary.json (NaN where missing)."""
    run = RunDir(run_dir)
    summary = load_json(run_dir / "summary.json")
    pkts = by_codepoint(run.packets())
    counts = queue.counts(pkts, run.sample_rate)
    delays = queue.delay_percentiles(pkts)
    fig: dict[str, float] = {"utilisation": _num(summary.get("utilization")),
                             "rate_ratio": _num(summary.get("l4s_classic_rate_ratio")),
                             "link_mbps": (run.link_rate_bps or math.nan) / 1e6}
    for cls in CLASSES:
        fig[f"{cls}_p50_ms"] = delays[cls]["p50"]
        fig[f"{cls}_p99_ms"] = delays[cls]["p99"]
        arrivals = counts["arrivals"][cls]
        fig[f"{cls}_mark_rate"] = counts["marks"][cls] / arrivals if arrivals else math.nan
        fig[f"{cls}_drop_rate"] = counts["drops"][cls] / arrivals if arrivals else math.nan
        fig[f"{cls}_mbps"] = sum(_num(f.get("goodput_mbps")) for f in summary.get("flows") or []
                                 if f.get("cls") == cls) if summary.get("flows") else math.nan
    return RunFigures(run.datapath or "?", run_dir.name, fig,
                      {cls: queue.sojourn(pkts, cls) for cls in CLASSES})


def by_codepoint(pkts: pd.DataFrame) -> pd.DataFrame:
    """The packets with `cls` from the ECN codepoint they arrived with (ECT(1), CE: l4s), not
    from the queue they went to: under a single-queue policy nfqueue logs the codepoint's
    class and ebpf the one queue's, so per-class figures compare only by codepoint."""
    if pkts.empty or "ecn_in" not in pkts:
        return pkts
    l4s = (pkts["ecn_in"].to_numpy() & 1) == 1
    return pkts.assign(cls=np.where(l4s, CLASSES.index("l4s"), CLASSES.index("classic")).astype("u1"))


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def self_w1(runs: Sequence[RunFigures], cls: str) -> float:
    """The largest W1 between two repetitions of one datapath (NaN with fewer than two)."""
    pairs = [wasserstein1(a.sojourn[cls], b.sojourn[cls]) for a, b in itertools.combinations(runs, 2)]
    pairs = [p for p in pairs if math.isfinite(p)]
    return max(pairs) if pairs else math.nan


def tolerance(name: str, reference: float, link_mbps: float = math.nan) -> float:
    """The largest |value - reference| figure `name` may have."""
    kind, tol = TOLERANCES[name]
    limit = tol * abs(reference) if kind == "rel" else tol
    if name in PACKETS_TOLERANCE and math.isfinite(link_mbps) and link_mbps > 0:
        limit = max(limit, PACKETS_TOLERANCE[name] * WIRE_MTU * 8 / (link_mbps * 1e3))  # ms
    return limit


def within(name: str, value: float, reference: float, link_mbps: float = math.nan) -> bool | None:
    """Is `value` within the tolerance of `reference` for figure `name`? None if unknown."""
    if not (math.isfinite(value) and math.isfinite(reference)):
        return None
    return abs(value - reference) <= tolerance(name, reference, link_mbps)


def compare(runs: Sequence[RunFigures], order: Sequence[str]) -> dict[str, Any]:
    """Per-datapath aggregates, distances and the verdict; `order[0]` is the reference."""
    by = {dp: [r for r in runs if r.datapath == dp] for dp in order}
    by = {dp: rs for dp, rs in by.items() if rs}
    agg = {dp: {f: _agg([r.figures[f] for r in rs]) for f in FIGURES} for dp, rs in by.items()}
    pooled = {dp: {cls: np.concatenate([r.sojourn[cls] for r in rs]) for cls in CLASSES}
              for dp, rs in by.items()}
    noise = {dp: {cls: self_w1(rs, cls) for cls in CLASSES} for dp, rs in by.items()}
    ref = next(iter(by), None)
    checks, distances = [], []
    for dp in by:
        if dp == ref:
            continue
        link = agg[ref]["link_mbps"]["mean"]
        for name in TOLERANCES:
            r, v = agg[ref][name]["mean"], agg[dp][name]["mean"]
            # a gap no wider than one datapath's own spread over its repetitions is noise
            limit = max(tolerance(name, r, link), _range(agg[ref][name]), _range(agg[dp][name]))
            ok = None if not (math.isfinite(v) and math.isfinite(r)) else abs(v - r) <= limit
            checks.append({"datapath": dp, "figure": name, "reference": r, "value": v,
                           "tolerance": f"+-{_fmt(limit)}", "ok": ok})
        for cls in CLASSES:
            w1 = wasserstein1(pooled[ref][cls], pooled[dp][cls])
            spread = [v for v in (noise[ref][cls], noise[dp][cls]) if math.isfinite(v)]
            limit = max(W1_FLOOR_MS[cls], W1_NOISE_FACTOR * max(spread, default=0.0))
            ok = None if not math.isfinite(w1) else w1 <= limit
            distances.append({"datapath": dp, "cls": cls, "w1_ms": w1,
                              "ks": ks_statistic(pooled[ref][cls], pooled[dp][cls]),
                              "self_w1_ms_ref": noise[ref][cls], "self_w1_ms": noise[dp][cls],
                              "w1_limit_ms": limit, "ok": ok})
            checks.append({"datapath": dp, "figure": f"{cls}_w1_ms", "reference": 0.0, "value": w1,
                           "tolerance": f"<= {limit:.3g} ms", "ok": ok})
    known = [c["ok"] for c in checks if c["ok"] is not None]
    verdict = "agree" if known and all(known) else "disagree" if known else "unknown"
    return {"reference": ref, "datapaths": list(by), "repetitions": {dp: len(rs) for dp, rs in by.items()},
            "figures": agg, "distances": distances, "checks": checks, "verdict": verdict}


def _range(a: dict[str, float]) -> float:
    """max - min over a datapath's repetitions (0 for one, or none)."""
    spread = a["max"] - a["min"]
    return spread if math.isfinite(spread) else 0.0


def _agg(values: list[float]) -> dict[str, float]:
    v = np.array([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per datapath and figure (mean, min, max over the repetitions): the CSV."""
    return [{"datapath": dp, "figure": f, **stats} for dp, figs in result["figures"].items()
            for f, stats in figs.items()]


def lines(result: dict[str, Any], skipped: dict[str, str]) -> list[str]:
    """The side-by-side table, distances, checks and verdict as text."""
    dps = result["datapaths"]
    heads = [f"{dp} ({result['repetitions'][dp]})" for dp in dps]
    out = [f"{'figure':<20}" + "".join(f"{h:>26}" for h in heads)]
    for f in FIGURES:
        cells = []
        for dp in dps:
            s = result["figures"][dp][f]
            cells.append(f"{_fmt(s['mean'])} [{_fmt(s['min'])}-{_fmt(s['max'])}]")
        out.append(f"{f:<20}" + "".join(f"{c:>26}" for c in cells))
    if result["distances"]:
        out.append("")
        out.append(f"sojourn distance to {result['reference']}: W1 ms (limit; self-W1 ref/this), KS")
        for d in result["distances"]:
            out.append(f"  {d['datapath']:<8} {d['cls']:<8} W1 {_fmt(d['w1_ms'])}"
                       f" (<= {_fmt(d['w1_limit_ms'])}; {_fmt(d['self_w1_ms_ref'])}/{_fmt(d['self_w1_ms'])})"
                       f"  KS {_fmt(d['ks'])}")
    out.append("")
    for c in result["checks"]:
        mark = {True: "ok", False: "DIFFERS", None: "n/a"}[c["ok"]]
        out.append(f"  {c['datapath']:<8} {c['figure']:<16} {_fmt(c['value'])} vs {_fmt(c['reference'])}"
                   f" ({c['tolerance']}): {mark}")
    for dp, why in skipped.items():
        out.append(f"  {dp:<8} skipped: {why}")
    out.append(f"verdict: {result['verdict']}")
    return out


def _fmt(v: float) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
