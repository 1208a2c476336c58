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

from orchestrator import strictjson

console = Console(stderr=True)


def delay_words(rtt_s: float, mode: str) -> str:
    """How the base RTT is made; `rtt: 0ms` adds none, whatever the delay mode."""
    return f"delay by {mode}" if rtt_s > 0 else "no added delay"


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
        click.echo(strictjson.dumps(summary, indent=1))
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
    for col in ("flow", "kind", "ecn", "goodput Mbit/s", "D_SS Mbit/s", "retransmits", "RTT p50 ms"):
        flows.add_column(col, justify="right")
    for f in summary.get("flows", []):
        flows.add_row(f.get("name"), f.get("kind"), str(f.get("ecn")), _fmt(f.get("goodput_mbps")),
                      _fmt(f.get("d_ss_mbps")), _fmt(f.get("retransmits")), _fmt(f.get("rtt_ms_p50")))
    out.print(flows)
    out.print(f"utilisation {_fmt(summary.get('utilization'), 3)}   Jain {_fmt(summary.get('jain_index'), 3)}"
              f"   Jain(D_SS) {_fmt(summary.get('jain_d_ss'), 3)}"
              f"   L4S/classic rate ratio {_fmt(summary.get('l4s_classic_rate_ratio'))}"
              f"   missed deadlines {_missed(summary)}")
    dyn = summary.get("dynamics")
    if dyn and dyn.get("changes"):
        out.print(dynamics_table(dyn))
    report = run_dir / "report.html"
    out.print(f"results: {run_dir}" + (f"\nreport:  {report}" if report.exists() else ""))


def dynamics_table(dyn: dict[str, Any]) -> Table:
    """Per capacity change: peak delay per class and classic drain time after a drop, the
    time back to 90% utilisation after a rise ('>=' when not within the interval)."""
    mean, target = _fmt(dyn.get("capacity_mean_mbps"), 1), _fmt(dyn.get("target_ms"), 0)
    table = Table(title=f"dynamic link: capacity changes (mean capacity {mean} Mbit/s, target {target} ms)")
    for col in ("t s", "change Mbit/s", "peak L4S ms", "peak classic ms", "classic drain s",
                "back to 90% s"):
        table.add_column(col, justify="right")
    for c in dyn["changes"]:
        peak = c.get("peak_delay_ms") or {}
        drain = _bound(c.get("drain_s"), c.get("drained")) if c.get("kind") == "drop" else "-"
        rec = _bound(c.get("recovery_s"), c.get("recovered")) if c.get("kind") == "rise" else "-"
        table.add_row(_fmt(c.get("t"), 1), f"{_fmt(c.get('from_mbps'), 0)} -> {_fmt(c.get('to_mbps'), 0)}",
                      _fmt(peak.get("l4s"), 1), _fmt(peak.get("classic"), 1), drain, rec)
    return table


def _bound(value: Any, reached: Any) -> str:
    return _fmt(value) if reached else f">= {_fmt(value)}"


def render_status(info: dict[str, Any]) -> str:
    """`testbed status` of one testbed (testbed.status.describe) as text."""
    bn = info["bottleneck"]
    lines = [f"testbed {info['name']} ({info['provider']}, {info['status']})",
             f"  bottleneck {bn['router']}:{bn['egress']}  {bn['rate_mbps']:g} Mbit/s  "
             f"RTT {bn['rtt_ms']:g} ms  buffer {bn['buffer_pkts']} pkts  "
             f"{delay_words(bn['rtt_ms'] / 1e3, bn['delay_mode'])}",
             "  hosts:"]
    for h in info["hosts"]:
        lines.append(f"    {h['name']:<10} {h['role']:<9} {', '.join(h['addresses'])}")
    lines.append("  links:")
    for lk in info["links"]:
        mark = "  <- bottleneck" if lk["bottleneck"] else ""
        lines.append(f"    {lk['a']}:{lk['a_iface']} {lk['a_addr']} <-> {lk['b']} {lk['b_addr']}{mark}")
    lines.append("  processes:")
    for p in info["processes"] or []:
        state = "running" if p["alive"] else "gone"
        lines.append(f"    {p['host']:<10} pid {p['pid']:<8} {p['tag']:<14} {state}")
    if not info["processes"]:
        lines.append("    (none)")
    return "\n".join(lines)
