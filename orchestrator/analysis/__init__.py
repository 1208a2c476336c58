"""Analysis of results directories: pcaps and telemetry in, summary, tables, plots, report out.

`analyze(run_dir)` is the one call `testbed run` and `testbed analyze` make.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def analyze(run_dir: str | Path, bin_s: float = 0.1, html: bool = True) -> dict[str, Any]:
    """summary.json, tables/, plots/ and (unless html=False) report.html; returns the summary."""
    from orchestrator.analysis import plots, report, summary

    a = summary.analyze(run_dir, bin_s)
    summary.write(a)
    plots.plot_run(a)
    if html:
        report.report([a.run.path], a.run.path / "report.html")
    return a.summary



def summarize(run_dir: str | Path, bin_s: float = 0.1) -> dict[str, Any]:
    """summary.json and tables/ only (no plots, no HTML); returns the summary."""
    from orchestrator.analysis import summary

    return summary.summarize(run_dir, bin_s)
