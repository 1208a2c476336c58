"""Several runs side by side (say, policies on one scenario): a table of the summary figures,
a terminal rendering of it, and a plot (p99 queue delay bars and queue-delay CDFs)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from orchestrator.analysis import queue, summary
from orchestrator.analysis.plots import COLOURS
from orchestrator.analysis.rundir import RunDir, load_json
from policies.base import CLASSES

LINESTYLES = ("-", "--", ":", "-.")


def _summary_of(run_dir: Path) -> dict[str, Any]:
    return load_json(run_dir / "summary.json") or summary.summarize(run_dir)


def compare(run_dirs: list[str | Path]) -> pd.DataFrame:
    """One row per run (index: run id), one column per figure."""
    rows = []
    for d in run_dirs:
        s = _summary_of(Path(d))
        qd = s.get("queue_delay_ms") or {}
        row = {"run": s.get("run_id") or Path(d).name, "status": s.get("status"), "policy": s.get("policy"),
               "datapath": s.get("datapath"), "utilization": s.get("utilization")}
        for cls in CLASSES:
            for p in ("p50", "p99"):
                row[f"{cls}_{p}_ms"] = (qd.get(cls) or {}).get(p)
        row.update(jain=s.get("jain_index"), l4s_classic_ratio=s.get("l4s_classic_rate_ratio"))
        for what in ("marks", "drops"):
            for cls in CLASSES:
                row[f"{what}_{cls}"] = (s.get(what) or {}).get(cls)
        row["missed_deadlines"] = s.get("missed_deadlines")
        row.update(dynamics_row(s.get("dynamics")))
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def dynamics_row(dyn: dict[str, Any] | None) -> dict[str, Any]:
    """Per-change figures of a dynamic link as columns: drop<i>_peak_<cls>_ms, drop<i>_drain_s
    (negative: never drained, the value is the bound), rise<i>_recovery_s."""
    if not dyn:
        return {}
    row: dict[str, Any] = {"capacity_mean_mbps": dyn.get("capacity_mean_mbps")}
    drops = [c for c in dyn.get("changes") or [] if c.get("kind") == "drop"]
    rises = [c for c in dyn.get("changes") or [] if c.get("kind") == "rise"]
    for i, c in enumerate(drops, 1):
        for cls in CLASSES:
            row[f"drop{i}_peak_{cls}_ms"] = (c.get("peak_delay_ms") or {}).get(cls)
        row[f"drop{i}_drain_s"] = c.get("drain_s") if c.get("drained") else f">={c.get('drain_s'):.3g}"
    for i, c in enumerate(rises, 1):
        row[f"rise{i}_recovery_s"] = c.get("recovery_s") if c.get("recovered") else \
            f">={c.get('recovery_s'):.3g}"
    return row


def render(frame: pd.DataFrame, width: int = 160) -> str:
    """The table with figures down and runs across, as text (a rich table)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    table.add_column("figure")
    for run in frame.index:
        table.add_column(str(run), justify="right")
    for col in frame.columns:
        table.add_row(col, *(_fmt(v) for v in frame[col]))
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot(run_dirs: list[str | Path], path: str | Path, frame: pd.DataFrame | None = None) -> Path | None:
    """Bars of p50/p99 queue delay per class and run, and each run's queue-delay CDFs."""
    frame = compare(run_dirs) if frame is None else frame
    fig = Figure(figsize=(11, 4.2))
    bars, cdf = fig.subplots(1, 2)
    x = np.arange(len(frame))
    width = 0.2
    for k, (cls, p) in enumerate((c, p) for c in CLASSES for p in ("p50", "p99")):
        values = pd.to_numeric(frame[f"{cls}_{p}_ms"], errors="coerce").to_numpy(np.float64)
        bars.bar(x + (k - 1.5) * width, values, width, color=COLOURS[cls], alpha=0.5 if p == "p50" else 1.0,
                 label=f"{cls} {p}")
    bars.set_xticks(x, [f"{r}\n{_fmt(frame.loc[r, 'policy'])}" for r in frame.index], fontsize="small")
    bars.set(ylabel="queue delay (ms)", title="Queue delay per class")
    bars.legend(fontsize="small")
    drew = _cdfs(cdf, run_dirs)
    if not drew:
        cdf.text(0.5, 0.5, "no per-packet telemetry", ha="center", transform=cdf.transAxes)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110, format="png")
    return out


def _cdfs(ax: Any, run_dirs: list[str | Path]) -> bool:
    drew = False
    for i, d in enumerate(run_dirs):
        run = RunDir(d)
        pkts = run.packets()
        for cls in CLASSES:
            values = queue.sojourn(pkts, cls)
            if not values.size:
                continue
            q = np.linspace(0, 1, min(2000, values.size))
            ax.plot(np.maximum(np.quantile(values, q), 1e-3), q, color=COLOURS[cls],
                    ls=LINESTYLES[i % len(LINESTYLES)], label=f"{run.run_id} {cls}")
            drew = True
    if drew:
        ax.set_xscale("log")
        ax.set(xlabel="queue delay (ms)", ylabel="CDF", title="Queue delay CDF")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small")
    return drew
