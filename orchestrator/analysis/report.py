"""One self-contained HTML page for one or more runs: plots inlined as base64 PNG, summary
tables, manifest details. Runs without a summary (or plots) are analysed first."""

from __future__ import annotations

import base64
import html
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.analysis import compare as comparemod
from orchestrator.analysis import plots, summary
from orchestrator.analysis.rundir import RunDir, load_json

PLOTS = (("queue_delay_cdf.png", "Queue delay CDF"), ("throughput.png", "Throughput per flow"),
         ("queue_delay.png", "Queue delay over time"), ("probability.png", "Marking and drop probability"))
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}.aborted{color:#b00;font-weight:bold}
.notes li{color:#555}pre{background:#f7f7f7;padding:.5em;overflow:auto;font-size:.85em}
"""


def report(run_dirs: list[str | Path], out_html: str | Path) -> Path:
    """Write the page; returns its path."""
    runs = [Path(d) for d in run_dirs]
    sections = [_comparison(runs)] if len(runs) > 1 else []
    sections += [_run_section(Path(d)) for d in runs]
    title = "L4S testbed report: " + ", ".join(html.escape(p.name) for p in runs)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{STYLE}</style></head><body><h1>{title}</h1>{''.join(sections)}</body></html>\n")
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary.atomic_write(out, page)
    return out


def ensure_analysed(run_dir: Path) -> dict[str, Any]:
    """The run's summary; analyses it (summary, tables, plots) if that was never done."""
    found = load_json(run_dir / "summary.json")
    if found and (run_dir / "plots").is_dir():
        return found
    a = summary.analyze(run_dir)
    summary.write(a)
    plots.plot_run(a)
    return a.summary


def _run_section(run_dir: Path) -> str:
    s = ensure_analysed(run_dir)
    run = RunDir(run_dir)
    status = s.get("status")
    head = (f"<h2>{html.escape(run.run_id)}</h2><p>status: <span class='{html.escape(str(status))}'>"
            f"{html.escape(str(status))}</span> &middot; policy <b>{html.escape(str(s.get('policy')))}</b> "
            f"&middot; datapath {html.escape(str(s.get('datapath')))}</p>")
    parts = [head, _table(_headline(s)), "<h3>Flows</h3>", _table(pd.json_normalize(s.get("flows") or []))]
    parts += ["<h3>Queue delay (ms)</h3>", _table(_delays(s))]
    if s.get("dynamics"):
        parts += ["<h3>Dynamic link: per change</h3>", _table(changes_table(s["dynamics"])),
                  "<h3>Dynamic link: utilisation per interval</h3>",
                  _table(pd.DataFrame(s["dynamics"].get("intervals") or []))]
    for name, caption in PLOTS:
        png = run_dir / "plots" / name
        if png.exists():
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f"<h3>{caption}</h3><img alt='{caption}' src='data:image/png;base64,{data}'>")
    if s.get("notes"):
        parts.append("<h3>Notes</h3><ul class='notes'>" +
                     "".join(f"<li>{html.escape(str(n))}</li>" for n in s["notes"]) + "</ul>")
    parts.append(_manifest(run.manifest))
    return "<section>" + "".join(parts) + "</section><hr>"


def _headline(s: dict[str, Any]) -> pd.DataFrame:
    keys = ("duration_s", "link_rate_mbps", "capacity_mean_mbps", "utilization", "jain_index",
            "l4s_classic_rate_ratio",
            "decisions", "missed_deadlines", "decide_us_p50", "decide_us_p99")
    rows = [(k, s.get(k)) for k in keys]
    rows += [(f"{what} {cls}", (s.get(what) or {}).get(cls)) for what in ("marks", "drops")
             for cls in ("l4s", "classic")]
    return pd.DataFrame(rows, columns=["figure", "value"])


def changes_table(dyn: dict[str, Any]) -> pd.DataFrame:
    """One row per capacity change: peak delay per class and drain time after a drop,
    recovery time after a rise."""
    rows = []
    for c in dyn.get("changes") or []:
        peak = c.get("peak_delay_ms") or {}
        rows.append({"t (s)": c.get("t"), "change": f"{c.get('from_mbps'):g} -> {c.get('to_mbps'):g} Mbit/s",
                     "kind": c.get("kind"), "peak L4S delay (ms)": peak.get("l4s"),
                     "peak classic delay (ms)": peak.get("classic"),
                     "classic drain (s)": _bound(c.get("drain_s"), c.get("drained")),
                     "recovery to 90% (s)": _bound(c.get("recovery_s"), c.get("recovered"))})
    return pd.DataFrame(rows)


def _bound(value: Any, reached: Any) -> Any:
    """A time, or '>= T' when the queue never drained (utilisation never recovered) before
    the next change."""
    if value is None:
        return None
    return value if reached else f">= {value:.3g}"


def _delays(s: dict[str, Any]) -> pd.DataFrame:
    qd = s.get("queue_delay_ms") or {}
    return pd.DataFrame([{"class": cls, **(qd.get(cls) or {})} for cls in ("l4s", "classic")])


def _manifest(manifest: dict[str, Any]) -> str:
    keys = ("run_id", "status", "policy", "policy_args", "datapath", "seed", "started", "ended", "versions")
    rows = pd.DataFrame([(k, _value(k, manifest.get(k))) for k in keys], columns=["key", "value"])
    full = html.escape(json.dumps(manifest, indent=1, default=str))
    return (f"<h3>Manifest</h3>{_table(rows)}<details><summary>full manifest (spec, scenario, flows)"
            f"</summary><pre>{full}</pre></details>")


def _value(key: str, value: Any) -> str:
    if key in ("started", "ended") and isinstance(value, (int, float)):
        return f"{value:.3f} ({datetime.fromtimestamp(value, timezone.utc):%Y-%m-%d %H:%M:%S} UTC)"
    return json.dumps(value)


def _comparison(runs: list[Path]) -> str:
    frame = comparemod.compare(runs)
    with tempfile.TemporaryDirectory() as tmp:
        png = comparemod.plot(runs, Path(tmp) / "compare.png", frame)
        img = base64.b64encode(png.read_bytes()).decode() if png else ""
    out = "<h2>Comparison</h2>" + _table(frame.reset_index())
    return out + (f"<img alt='comparison' src='data:image/png;base64,{img}'>" if img else "")


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>(none)</p>"
    return frame.to_html(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}", border=0, escape=True)
