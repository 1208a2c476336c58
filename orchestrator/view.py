"""Terminal output of runs: a progress bar with phases, and the summary table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


class RunProgress:
    """Phases (deploying, traffic, stopping, analysing) and the time left of the traffic phase."""

    def __init__(self, total_s: float | None = None) -> None:
        self.total_s = total_s
        self.progress = Progress(TextColumn("{task.description:<18}"), BarColumn(),
                                 TextColumn("{task.fields[left]}"), TimeRemainingColumn(),
                                 console=console, transient=True)
        self.task = None

    def __enter__(self) -> RunProgress:
        self.progress.start()
        self.task = self.progress.add_task("starting", total=self.total_s or 1, left="")
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, phase: str, left_s: float) -> None:
        if left_s >= 0 and self.total_s:
            self.progress.update(self.task, description=phase, completed=self.total_s - left_s,
                                 left=f"{left_s:5.1f} s left")
        else:
            self.progress.update(self.task, description=phase, left="")

    def log(self, text: str) -> None:
        self.progress.console.print(text)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def _missed(summary: dict) -> str:
    """'5 of 1338 (0.37%)': a count means little without the number of decisions."""
    missed, total = summary.get("missed_deadlines"), summary.get("decisions")
    if missed is None or not total:
        return _fmt(missed)
    return f"{missed} of {total} ({missed / total:.2%})"


def print_summary(run_dir: Path, as_json: bool = False) -> None:
    path = run_dir / "summary.json"
    if not path.exists():
        click.echo(f"results: {run_dir} (no summary: see {run_dir / 'analysis-error.txt'})")
        return
    summary = json.loads(path.read_text())
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    out = Console()
    head = Table(title=f"{summary.get('policy')} on {summary.get('datapath')}, "
                       f"{_fmt(summary.get('duration_s'), 1)} s, {summary.get('status')}")
    for col in ("class", "delay p50 ms", "p95", "p99", "p99.9", "marks", "drops"):
        head.add_column(col, justify="right")
    qd = summary.get("queue_delay_ms") or {}
    for cls in ("l4s", "classic"):
        d = qd.get(cls) or {}
        head.add_row(cls, _fmt(d.get("p50")), _fmt(d.get("p95")), _fmt(d.get("p99")),
                     _fmt(d.get("p999")), _fmt((summary.get("marks") or {}).get(cls)),
                     _fmt((summary.get("drops") or {}).get(cls)))
    out.print(head)
    flows = Table()
    for col in ("flow", "kind", "ecn", "goodput Mbit/s", "retransmits", "RTT p50 ms"):
        flows.add_column(col, justify="right")
    for f in summary.get("flows", []):
        flows.add_row(f.get("name"), f.get("kind"), str(f.get("ecn")), _fmt(f.get("goodput_mbps")),
                      _fmt(f.get("retransmits")), _fmt(f.get("rtt_ms_p50")))
    out.print(flows)
    out.print(f"utilisation {_fmt(summary.get('utilization'), 3)}   Jain {_fmt(summary.get('jain_index'), 3)}"
              f"   L4S/classic rate ratio {_fmt(summary.get('l4s_classic_rate_ratio'))}"
              f"   missed deadlines {_missed(summary)}")
    report = run_dir / "report.html"
    out.print(f"results: {run_dir}" + (f"\nreport:  {report}" if report.exists() else ""))
