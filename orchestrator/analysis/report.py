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
.wide{overflow-x:auto;max-width:100%}dl.setup{display:grid;grid-template-columns:max-content 1fr;
gap:2px 1em}dl.setup dt{font-weight:bold}dl.setup dd{margin:0}
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
    parts = [head, "<h3>Setup</h3>", setup_html(run.manifest), "<h3>Results</h3>",
             _table(_headline(s)), "<h3>Flows</h3>", _table(flows_table(s.get("flows") or []))]
    parts += ["<h3>Queue delay per traffic class (ms)</h3>", _table(_delays(s))]
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


# summary keys -> what a reader calls them, with the unit
HEADLINE = {"duration_s": "Traffic duration (s)", "link_rate_mbps": "Bottleneck rate (Mbit/s)",
            "capacity_mean_mbps": "Capacity in force, mean (Mbit/s)",
            "utilization": "Link utilisation (0-1)", "jain_index": "Jain fairness index (0-1)",
            "l4s_classic_rate_ratio": "L4S / Classic throughput ratio",
            "decisions": "AQM decisions (count)", "missed_deadlines": "Missed decision deadlines",
            "decide_us_p50": "Decision time, median (µs)", "decide_us_p99": "Decision time, p99 (µs)"}
FLOW_COLUMNS = {"name": "Flow", "kind": "Kind", "ecn": "ECN", "cls": "Queue",
                "goodput_mbps": "Goodput (Mbit/s)", "throughput_mbps": "Throughput (Mbit/s)",
                "rtt_ms_p50": "RTT median (ms)", "rtt_ms_p95": "RTT p95 (ms)",
                "retransmits": "Retransmits", "ecn_counts.ce": "CE-marked packets"}
DELAY_COLUMNS = {"p50": "median", "p95": "p95", "p99": "p99", "p999": "p99.9"}
CLASSES = {"l4s": "L4S", "classic": "Classic"}


def _headline(s: dict[str, Any]) -> pd.DataFrame:
    rows = [(label, s.get(k)) for k, label in HEADLINE.items()]
    rows += [(f"{name} packets {word}", (s.get(key) or {}).get(cls))
             for key, word in (("marks", "CE-marked"), ("drops", "dropped"))
             for cls, name in CLASSES.items()]
    return pd.DataFrame(rows, columns=["Figure", "Value"])


def flows_table(flows: list[dict[str, Any]]) -> pd.DataFrame:
    """The flows with the columns a reader compares, labelled with units; the rest of each
    flow's record stays in summary.json (a table of every key is wider than the page)."""
    frame = pd.json_normalize(flows) if flows else pd.DataFrame()
    cols = [c for c in FLOW_COLUMNS if c in frame.columns]
    return frame[cols].rename(columns=FLOW_COLUMNS) if cols else frame


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
    frame = pd.DataFrame([{"class": CLASSES[cls], **(qd.get(cls) or {})} for cls in CLASSES])
    return frame.rename(columns={"class": "Class", **DELAY_COLUMNS})


def setup_html(m: dict[str, Any]) -> str:
    """What produced the run, first: the testbed, its bottleneck link, the scenario's flows,
    the policy. From the manifest (an older or aborted run may lack some: shown as '-')."""
    spec = m.get("spec") or {}
    hosts = spec.get("hosts") or []
    roles = ", ".join(f"{h.get('name')} ({h.get('role')})" for h in hosts if isinstance(h, dict))
    sc = m.get("scenario") or {}
    flows = sc.get("flows") or []

    def flow_line(f: dict[str, Any]) -> str:
        how = f.get("cc") or f.get("rate") or f.get("ecn") or ""
        when = f"from {f.get('start', '0s')}" + (f" for {f['duration']}" if f.get("duration") else "")
        return f"{f.get('name')}: {f.get('kind')} {how} {f.get('src')} → {f.get('dst')}, {when}"

    args = m.get("policy_args") or {}
    items = [
        ("Testbed", f"{m.get('testbed', '-')} ({m.get('provider', '-')}), {len(hosts)} hosts: {roles}"),
        ("Bottleneck link", f"{_num(m.get('link_rate_mbps'))} Mbit/s, base RTT "
                            f"{_num(m.get('rtt_ms'))} ms, buffer {_num(m.get('buffer_pkts'))} packets "
                            f"({_num((m.get('buffer_bytes') or 0) / 1e3)} kB)"),
        ("Scenario", f"{sc.get('name') or '(unnamed)'}, {_num(m.get('duration_s'))} s, "
                     f"{len(flows)} flows"),
        ("Flows", "<br>".join(html.escape(flow_line(f)) for f in flows if isinstance(f, dict)) or "-"),
        ("AQM policy", f"{m.get('policy', '-')} on the {m.get('datapath', '-')} datapath"
                       + (f" ({', '.join(f'{k}={v}' for k, v in args.items() if v is not None)})"
                          if any(v is not None for v in args.values()) else " (defaults)")),
        ("Seed", str(m.get("seed", "-"))),
        ("Started", _value("started", m.get("started"))),
    ]
    body = "".join(f"<dt>{html.escape(k)}</dt><dd>{v if k == 'Flows' else html.escape(v)}</dd>"
                   for k, v in items)
    return f"<dl class='setup'>{body}</dl>"


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) and not isinstance(x, bool) else "-"


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
    # in a scrolling box: a wide table scrolls inside the page instead of widening it
    table = frame.to_html(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}", border=0,
                          escape=True)
    return f"<div class='wide'>{table}</div>"
