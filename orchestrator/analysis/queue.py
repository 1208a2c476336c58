"""Per-class queue figures from the datapath's per-packet telemetry and the control log.

Columns of the packet log: t_arrival, t_departure (NaN if dropped), cls (0 l4s, 1 classic),
ecn_in, action (policies.base.Action), size, sojourn_ms (NaN if dropped), 5-tuple. A datapath
may log one packet in N (meta.json `sample_rate` = 1/N): delay percentiles are unbiased under
uniform sampling, while counts and bytes are scaled up by 1/sample_rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from policies.base import CLASSES, Action

PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
COLUMNS = {"t_arrival": "f8", "t_departure": "f8", "cls": "u1", "ecn_in": "u1", "action": "u1",
           "size": "u2", "sojourn_ms": "f4"}


def ensure(pkts: pd.DataFrame) -> pd.DataFrame:
    """The frame itself, or an empty one with the telemetry columns if it lacks any of them
    (no telemetry at all, or a datapath that logs something else)."""
    if all(c in pkts for c in COLUMNS):
        return pkts
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in COLUMNS.items()})


def sojourn(pkts: pd.DataFrame, cls: str) -> np.ndarray:
    """Sojourn times (ms) of the packets of class `cls` that left the queue."""
    pkts = ensure(pkts)
    mine = pkts[(pkts["cls"] == CLASSES.index(cls)) & (pkts["action"] != Action.DROP)]
    values = mine["sojourn_ms"].to_numpy(np.float64)
    return values[np.isfinite(values)]


def delay_percentiles(pkts: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{class: {p50, p95, p99, p999, mean, max}} in ms; NaN for a class without packets."""
    out = {}
    for cls in CLASSES:
        values = sojourn(pkts, cls)
        row = {k: float(np.percentile(values, q)) if values.size else np.nan for k, q in PERCENTILES.items()}
        row["mean"] = float(values.mean()) if values.size else np.nan
        row["max"] = float(values.max()) if values.size else np.nan
        out[cls] = row
    return out


def counts(pkts: pd.DataFrame, sample_rate: float = 1.0) -> dict[str, dict[str, float]]:
    """{'marks'|'drops'|'arrivals'|'departed_bytes': {class: count}}, scaled by 1/sample_rate."""
    pkts = ensure(pkts)
    out: dict[str, dict[str, float]] = {k: {} for k in ("marks", "drops", "arrivals", "departed_bytes")}
    for cls in CLASSES:
        mine = pkts[pkts["cls"] == CLASSES.index(cls)]
        action = mine["action"].to_numpy()
        gone = np.isfinite(mine["t_departure"].to_numpy(np.float64))
        size = mine["size"].to_numpy(np.float64)
        out["marks"][cls] = _scaled(np.count_nonzero(action == Action.MARK), sample_rate)
        out["drops"][cls] = _scaled(np.count_nonzero(action == Action.DROP), sample_rate)
        out["arrivals"][cls] = _scaled(len(action), sample_rate)
        out["departed_bytes"][cls] = float(size[gone].sum()) / sample_rate
    return out


def _scaled(n: int, sample_rate: float) -> float:
    """n / sample_rate, as an int when it is one (JSON readers like counts to be counts)."""
    value = n / sample_rate
    return int(value) if float(value).is_integer() else value


def window(pkts: pd.DataFrame) -> tuple[float, float]:
    """(first arrival, last departure): the span the bottleneck carried traffic."""
    pkts = ensure(pkts)
    if pkts.empty:
        return np.nan, np.nan
    last = np.nanmax(pkts[["t_arrival", "t_departure"]].to_numpy())
    return float(np.nanmin(pkts["t_arrival"])), float(last)


def utilisation(pkts: pd.DataFrame, link_rate_bps: float | None, sample_rate: float = 1.0,
                span: tuple[float, float] | None = None) -> float:
    """Departed bytes / (link rate * duration); the duration is `span`, by default the
    telemetry's own window (first arrival to last departure)."""
    pkts = ensure(pkts)
    if pkts.empty or not link_rate_bps:
        return np.nan
    first, last = span if span is not None else window(pkts)
    if not last > first:
        return np.nan
    gone = pkts[np.isfinite(pkts["t_departure"].to_numpy(np.float64))]
    gone = gone[(gone["t_departure"] >= first) & (gone["t_departure"] <= last)]
    if span is None and last - first >= 3:
        return _busy_seconds_utilisation(gone, first, last, link_rate_bps, sample_rate)
    return float(gone["size"].sum()) / sample_rate * 8 / (link_rate_bps * (last - first))


def _busy_seconds_utilisation(gone: pd.DataFrame, first: float, last: float, rate: float,
                              sample_rate: float) -> float:
    """The mean of per-second utilisation over the whole seconds of the window, without the
    nearly idle seconds at its edges (a handshake before the flows ramp up, stragglers after
    they end) and without the last partial second. From first arrival to last departure, an
    overloaded link read 0.896 while every second of it was 0.995-0.999 (issue 10)."""
    n = int(last - first)
    sec = ((gone["t_departure"].to_numpy(np.float64) - first) // 1).astype(np.int64)
    per_s = np.bincount(sec[sec < n], weights=gone["size"].to_numpy(np.float64)[sec < n],
                        minlength=n) / sample_rate * 8 / rate
    busy = np.flatnonzero(per_s >= 0.1)
    if busy.size == 0:
        return float(per_s.mean())
    return float(per_s[busy[0]:busy[-1] + 1].mean())


def delay_over_time(pkts: pd.DataFrame, t0: float, bin_s: float) -> pd.DataFrame:
    """Per bin of departure time and class: p50, p99 and max sojourn in ms. Wide: one row per
    bin, columns '<cls>_delay_p50_ms', ...; `t` is seconds since t0."""
    pkts = ensure(pkts)
    frames = []
    for cls in CLASSES:
        mine = pkts[(pkts["cls"] == CLASSES.index(cls)) & np.isfinite(pkts["sojourn_ms"].to_numpy(np.float64))
                    & (pkts["action"] != Action.DROP)]
        if mine.empty:
            continue
        b = _bin(mine["t_departure"], t0, bin_s)
        g = mine["sojourn_ms"].astype(np.float64).groupby(b)
        frames.append(pd.DataFrame({f"{cls}_delay_p50_ms": g.median(),
                                    f"{cls}_delay_p99_ms": g.quantile(0.99),
                                    f"{cls}_delay_max_ms": g.max()}))
    return _join(frames, bin_s)


def probability_over_time(pkts: pd.DataFrame, control: pd.DataFrame, t0: float, bin_s: float) -> pd.DataFrame:
    """Per bin: the policy's mark/drop probabilities (mean of its decisions in the bin) and
    the fractions of arriving packets the datapath marked and dropped, per class."""
    frames = []
    wanted = [f"{c}_p_{a}" for c in CLASSES for a in ("mark", "drop")]
    if not control.empty and "t" in control:
        have = [c for c in wanted if c in control]
        if have:
            frames.append(control[have].astype(np.float64).groupby(_bin(control["t"], t0, bin_s)).mean())
    pkts = ensure(pkts)
    for cls in CLASSES:
        mine = pkts[pkts["cls"] == CLASSES.index(cls)]
        if mine.empty:
            continue
        action = mine["action"].to_numpy()
        g = pd.DataFrame({f"{cls}_marked_frac": (action == Action.MARK).astype(np.float64),
                          f"{cls}_dropped_frac": (action == Action.DROP).astype(np.float64)})
        frames.append(g.groupby(_bin(mine["t_arrival"], t0, bin_s).to_numpy()).mean())
    return _join(frames, bin_s)


def control_figures(control: pd.DataFrame) -> dict[str, float | int | None]:
    """Decisions taken, deadlines missed and decision time of the control loop."""
    if control.empty:
        return {"decisions": None, "missed_deadlines": None, "decide_us_p50": None, "decide_us_p99": None}
    us = control["decide_us"].to_numpy(np.float64) if "decide_us" in control else np.zeros(0)
    us = us[np.isfinite(us)]
    return {
        "decisions": int(len(control)),
        "missed_deadlines": int(control["missed"].astype(bool).sum()) if "missed" in control else None,
        "decide_us_p50": float(np.percentile(us, 50)) if us.size else None,
        "decide_us_p99": float(np.percentile(us, 99)) if us.size else None,
    }


def _bin(t: pd.Series, t0: float, bin_s: float) -> pd.Series:
    return np.floor((t.astype(np.float64) - t0) / bin_s).astype(np.int64).rename("bin")


def _join(frames: list[pd.DataFrame], bin_s: float) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame({"t": []})
    wide = pd.concat(frames, axis=1).sort_index()
    wide.insert(0, "t", (wide.index.to_numpy() * bin_s).round(9))
    return wide.reset_index(drop=True)
