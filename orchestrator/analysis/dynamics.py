"""Figures for links that change during a run: what AQM papers report for dynamic links.

Inputs: the capacity in force over time (steps `(t, bit/s)`, t in seconds since the run's
origin, as the datapath recorded it), the schedule's changes `(t, before, after)`, and the
per-packet telemetry (epoch times, as analysis/queue.py reads it).

- For each capacity **drop**: the peak queue delay of each class after it (the largest
  sojourn of a packet that left between the change and the next one), and the **drain time**:
  from the change until the classic queue delay is back under the target (the first bin,
  after the first bin over target, whose median classic sojourn is at or under target; 0 if
  no bin went over). A queue that never drains before the next change gets `drained: false`
  and the interval's length as a lower bound.
- For each **rise**: the **recovery time**, from the change to the end of the first bin whose
  utilisation (bytes that left / capacity of the bin) is at least 90%; `recovered: false` and
  the interval's length if none is.
- **Utilisation per interval** (between changes, or per `trace_interval_s` for a trace):
  bytes that left against the capacity integrated over the interval, so a run whose link
  halves is not scored against its first rate.

Bins are `bin_s` long (100 ms by default) and start at the change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis import queue
from orchestrator.spec.schedule import Schedule, Step
from policies.base import CLASSES, Action

BIN_S = 0.1
RECOVERED_UTIL = 0.9
DEFAULT_TARGET_MS = 15.0  # PIE's and sch_dualpi2's target: the reference for policies without one


def capacity_schedule(steps: Sequence[tuple[float, float]]) -> Schedule:
    """The capacity in force as a Schedule (for its integral). Steps before 0 fold into the
    value at 0; equal times keep the last."""
    clean: list[Step] = []
    for t, rate in sorted(steps, key=lambda s: s[0]):
        t = max(float(t), 0.0)
        if clean and t <= clean[-1].at:
            clean[-1] = Step(clean[-1].at, float(rate))
        else:
            clean.append(Step(t, float(rate)))
    if clean and clean[0].at > 0:
        clean.insert(0, Step(0.0, clean[0].value))
    return Schedule(clean, "rate")


def _departed(pkts: pd.DataFrame, t0: float) -> tuple[np.ndarray, np.ndarray]:
    """(departure time since t0, wire bytes) of every packet that left the queue."""
    pkts = queue.ensure(pkts)
    t = pkts["t_departure"].to_numpy(np.float64)
    ok = np.isfinite(t) & (pkts["action"].to_numpy() != Action.DROP)
    return t[ok] - t0, pkts["size"].to_numpy(np.float64)[ok]


def utilisation(cap: Schedule, dep_t: np.ndarray, dep_bytes: np.ndarray, a: float, b: float,
                sample_rate: float = 1.0) -> float:
    """Bits that left in [a, b) over the capacity's integral over it."""
    bits = cap.integral(a, b)
    if not bits > 0:
        return math.nan
    sent = dep_bytes[(dep_t >= a) & (dep_t < b)].sum() / sample_rate * 8
    return float(sent / bits)


def per_interval(cap: Schedule, edges: Sequence[float], dep_t: np.ndarray, dep_bytes: np.ndarray,
                 sample_rate: float = 1.0) -> list[dict[str, float]]:
    """Utilisation of each interval [edges[i], edges[i+1])."""
    out = []
    for a, b in zip(edges, edges[1:], strict=False):
        if b <= a:
            continue
        out.append({"t0": round(a, 6), "t1": round(b, 6), "capacity_mbps": cap.mean(a, b) / 1e6,
                    "utilization": utilisation(cap, dep_t, dep_bytes, a, b, sample_rate)})
    return out


def _classic_median(pkts: pd.DataFrame, t0: float, a: float, b: float, bin_s: float) -> np.ndarray:
    """Median classic sojourn (ms) per bin of [a, b) by departure time; NaN for empty bins."""
    pkts = queue.ensure(pkts)
    mine = pkts[(pkts["cls"] == CLASSES.index("classic")) & (pkts["action"] != Action.DROP)]
    t = mine["t_departure"].to_numpy(np.float64) - t0
    soj = mine["sojourn_ms"].to_numpy(np.float64)
    n = max(1, math.ceil((b - a) / bin_s - 1e-9))
    ok = np.isfinite(t) & np.isfinite(soj) & (t >= a) & (t < b)
    idx = np.floor((t[ok] - a) / bin_s).astype(np.int64)
    out = np.full(n, np.nan)
    if idx.size:
        frame = pd.DataFrame({"bin": idx, "soj": soj[ok]})
        med = frame.groupby("bin")["soj"].median()
        med = med[med.index < n]
        out[med.index.to_numpy()] = med.to_numpy()
    return out


def drain_time(medians: np.ndarray, target_ms: float, bin_s: float) -> tuple[float | None, bool]:
    """(seconds from the interval's start until the classic delay is back at or under target,
    drained?). See the module docstring; NaN bins (nothing left) do not count either way."""
    over = np.flatnonzero(np.nan_to_num(medians, nan=-np.inf) > target_ms)
    if over.size == 0:
        return 0.0, True
    after = medians[over[0] + 1:]
    under = np.flatnonzero(np.isfinite(after) & (after <= target_ms))
    if under.size == 0:
        return len(medians) * bin_s, False
    return (over[0] + 1 + under[0]) * bin_s, True


def recovery_time(cap: Schedule, dep_t: np.ndarray, dep_bytes: np.ndarray, a: float, b: float,
                  bin_s: float, sample_rate: float = 1.0) -> tuple[float, bool]:
    """(seconds from a to the end of the first bin at >= 90% utilisation, recovered?)."""
    n = max(1, math.ceil((b - a) / bin_s - 1e-9))
    for k in range(n):
        lo, hi = a + k * bin_s, min(a + (k + 1) * bin_s, b)
        if utilisation(cap, dep_t, dep_bytes, lo, hi, sample_rate) >= RECOVERED_UTIL:
            return hi - a, True
    return b - a, False


def peak_delays(pkts: pd.DataFrame, t0: float, a: float, b: float) -> dict[str, float | None]:
    """Largest sojourn (ms) per class of the packets that left in [a, b)."""
    pkts = queue.ensure(pkts)
    out: dict[str, float | None] = {}
    t = pkts["t_departure"].to_numpy(np.float64) - t0
    for cls in CLASSES:
        sel = ((pkts["cls"].to_numpy() == CLASSES.index(cls)) & (pkts["action"].to_numpy() != Action.DROP)
               & (t >= a) & (t < b))
        soj = pkts["sojourn_ms"].to_numpy(np.float64)[sel]
        soj = soj[np.isfinite(soj)]
        out[cls] = float(soj.max()) if soj.size else None
    return out


def analyse(capacity: Sequence[tuple[float, float]], changes: Sequence[tuple[float, float, float]],
            pkts: pd.DataFrame, t0: float, end_s: float, target_ms: float = DEFAULT_TARGET_MS,
            sample_rate: float = 1.0, bin_s: float = BIN_S,
            trace_interval_s: float | None = None) -> dict[str, Any]:
    """The per-change and per-interval figures (see the module docstring).

    capacity: (t, bit/s) steps in force, t since t0; changes: (t, before, after) of the
    schedule (empty for a trace: then intervals are `trace_interval_s` long)."""
    cap = capacity_schedule(capacity)
    dep_t, dep_bytes = _departed(pkts, t0)
    times = [c[0] for c in changes if 0 < c[0] < end_s]
    if trace_interval_s:
        edges = [k * trace_interval_s for k in range(int(end_s / trace_interval_s) + 1)]
        if edges[-1] < end_s:
            edges.append(end_s)
    else:
        edges = [0.0, *times, end_s]
    out_changes = []
    for i, (t, before, after) in enumerate(changes):
        if not 0 < t < end_s:
            continue
        nxt = next((c[0] for c in changes[i + 1:] if c[0] > t), end_s)
        nxt = min(nxt, end_s)
        row: dict[str, Any] = {"t": t, "from_mbps": before / 1e6, "to_mbps": after / 1e6,
                               "kind": "drop" if after < before else "rise"}
        if after < before:
            row["peak_delay_ms"] = peak_delays(pkts, t0, t, nxt)
            drain, drained = drain_time(_classic_median(pkts, t0, t, nxt, bin_s), target_ms, bin_s)
            row.update(drain_s=drain, drained=drained, target_ms=target_ms)
        else:
            rec, ok = recovery_time(cap, dep_t, dep_bytes, t, nxt, bin_s, sample_rate)
            row.update(recovery_s=rec, recovered=ok)
        out_changes.append(row)
    total = cap.integral(0.0, end_s)
    sent = dep_bytes[(dep_t >= 0) & (dep_t < end_s)].sum() / sample_rate * 8
    return {"changes": out_changes,
            "intervals": per_interval(cap, edges, dep_t, dep_bytes, sample_rate),
            "utilization": float(sent / total) if total > 0 else math.nan,
            "capacity_mean_mbps": total / end_s / 1e6 if end_s > 0 else math.nan,
            "target_ms": target_ms}


# ---------------------------------------------------------------- a run's record


def read_capacity(run_dir: Any) -> dict[str, Any]:
    """telemetry/capacity.json of a run ({} for a static link or a run that never started)."""
    import json
    from pathlib import Path

    try:
        data = json.loads((Path(run_dir) / "telemetry" / "capacity.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("t0_epoch") is not None and data.get("steps") else {}


def target_of(policy_args: dict[str, Any] | None) -> float:
    """The classic delay target the drain time is measured against: the policy's own
    (target_ms), else PIE's and sch_dualpi2's 15 ms."""
    value = (policy_args or {}).get("target_ms")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 \
        else DEFAULT_TARGET_MS


def of_run(cap: dict[str, Any], pkts: pd.DataFrame, duration_s: float, policy_args: dict[str, Any] | None,
           sample_rate: float = 1.0) -> dict[str, Any]:
    """The dynamics figures of a run from its capacity record; times since the scenario's start."""
    t0 = float(cap["t0_epoch"])
    steps = [(float(t) - t0, float(r)) for t, r in cap["steps"]]
    changes = [(float(t), float(a), float(b)) for t, a, b in cap.get("changes") or []]
    out = analyse(steps, changes, pkts, t0, duration_s, target_of(policy_args), sample_rate,
                  trace_interval_s=1.0 if cap.get("kind") in ("mahimahi", "trace") else None)
    out.update(kind=cap.get("kind"), datapath=cap.get("datapath"), t0_epoch=t0)
    for key in ("late_ms_p50", "late_ms_p99", "late_ms_max", "opportunities_used", "opportunities_offered"):
        if key in cap:
            out[key] = cap[key]
    return out


def capacity_series(cap: dict[str, Any], run_t0: float, t: np.ndarray) -> np.ndarray:
    """The capacity in force (Mbit/s) at times t (seconds since the run's origin run_t0)."""
    sched = capacity_schedule([(float(x) - run_t0, float(r)) for x, r in cap["steps"]])
    return np.array([sched.value_at(x) / 1e6 for x in t])
