"""PNG plots of one run: queue-delay CDF per class, throughput per flow, queue delay and
mark/drop probability over time.

Figures are built with matplotlib's object API (Figure, not pyplot): no global state, no GUI
backend, safe in threads and on machines without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from policies.base import CLASSES

if TYPE_CHECKING:
    from orchestrator.analysis.summary import Analysis

COLOURS = {"l4s": "tab:blue", "classic": "tab:orange"}
CDF_POINTS = 2000  # a CDF of millions of samples is drawn through this many quantiles


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(path)
    return path


def delay_cdf(sojourn: dict[str, np.ndarray], path: Path, title: str = "") -> Path | None:
    """CDF of the per-packet queue delay of each class, log-scaled delay axis."""
    present = {c: v for c, v in sojourn.items() if v.size}
    if not present:
        return None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for cls, values in present.items():
        q = np.linspace(0, 1, min(CDF_POINTS, values.size))
        ax.plot(np.maximum(np.quantile(values, q), 1e-3), q, label=f"{cls} (n={values.size})",
                color=COLOURS.get(cls))
    ax.set_xscale("log")
    ax.set(xlabel="queue delay (ms)", ylabel="CDF", title=title or "Queue delay per class")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def throughput(ts: pd.DataFrame, flows: list[str], path: Path, title: str = "") -> Path | None:
    """Goodput of each flow over time (and its wire throughput, dashed)."""
    have = [f for f in flows if f"{f}_goodput_mbps" in ts]
    if not have:
        return None
    fig = Figure(figsize=(7.2, 4.0))
    ax = fig.subplots()
    for name in have:
        line, = ax.plot(ts["t"], ts[f"{name}_goodput_mbps"], label=f"{name} goodput")
        ax.plot(ts["t"], ts[f"{name}_throughput_mbps"], color=line.get_color(), ls="--", lw=0.8, alpha=0.6)
    if "capacity_mbps" in ts:  # a dynamic link: the capacity in force, as a step line
        ax.step(ts["t"], ts["capacity_mbps"], where="post", color="black", lw=1.2, label="link capacity")
    ax.set(xlabel="time (s)", ylabel="Mbit/s", title=title or "Throughput per flow (dashed: IP bytes)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def delay_over_time(ts: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Median (line) and p99 (shade) queue delay per class over time."""
    have = [c for c in CLASSES if f"{c}_delay_p50_ms" in ts]
    if not have:
        return None
    fig = Figure(figsize=(7.2, 4.0))
    ax = fig.subplots()
    for cls in have:
        ax.plot(ts["t"], ts[f"{cls}_delay_p50_ms"], color=COLOURS[cls], label=f"{cls} p50")
        ax.fill_between(ts["t"], ts[f"{cls}_delay_p50_ms"], ts[f"{cls}_delay_p99_ms"], color=COLOURS[cls],
                        alpha=0.25, label=f"{cls} p50-p99", step=None)
    ax.set(xlabel="time (s)", ylabel="queue delay (ms)", title=title or "Queue delay over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def probability_over_time(ts: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Mark and drop probability per class: the policy's decision (solid) and what the
    datapath did to arriving packets (dotted)."""
    series = [(f"{c}_p_{a}", f"{c}_{past}_frac", c, a) for c in CLASSES
              for a, past in (("mark", "marked"), ("drop", "dropped"))]
    if not any(s in ts or o in ts for s, o, _, _ in series):
        return None
    fig = Figure(figsize=(7.2, 5.0))
    axes = fig.subplots(2, 1, sharex=True)
    for decided, observed, cls, action in series:
        ax = axes[0 if action == "mark" else 1]
        if decided in ts:
            ax.plot(ts["t"], ts[decided], color=COLOURS[cls], label=f"{cls} policy")
        if observed in ts:
            ax.plot(ts["t"], ts[observed], color=COLOURS[cls], ls=":", label=f"{cls} observed")
    for ax, what in zip(axes, ("marking", "drop"), strict=True):
        ax.set(ylabel=f"{what} probability")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    axes[0].set_title(title or "Marking and drop probability over time")
    axes[1].set_xlabel("time (s)")
    return _save(fig, path)


def plot_run(a: Analysis) -> list[Path]:
    """All plots of an analysed run into <run>/plots/; returns the files written."""
    out = a.run.path / "plots"
    names = [f.name for f in a.flows]
    made = [delay_cdf(a.sojourn, out / "queue_delay_cdf.png"),
            throughput(a.timeseries, names, out / "throughput.png"),
            delay_over_time(a.timeseries, out / "queue_delay.png"),
            probability_over_time(a.timeseries, out / "probability.png")]
    return [p for p in made if p is not None]
