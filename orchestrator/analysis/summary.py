"""One run's analysis: summary.json plus tables/ (Parquet and CSV).

`summarize(run_dir)` is what `testbed run` and `testbed analyze` call. Whatever is missing
(no telemetry, no pcap of a host, a flow without a report, a capture cut short) turns into
NaN/None and a line in summary['notes'], never an exception: an aborted run must still be
summarised from what it kept.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator import strictjson
from orchestrator.analysis import dynamics as dynmod
from orchestrator.analysis import flows as flowmod
from orchestrator.analysis import queue, steady
from orchestrator.analysis.pcap import read_pcap
from orchestrator.analysis.rundir import RunDir, flow_class
from policies.base import CLASSES

BIN_S = 0.1


@dataclass
class Analysis:
    """Everything computed for one run; the summary is its JSON face."""

    run: RunDir
    t0: float
    summary: dict[str, Any] = field(default_factory=dict)
    flows: list[flowmod.FlowFigures] = field(default_factory=list)
    flow_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    queue_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    timeseries: pd.DataFrame = field(default_factory=pd.DataFrame)
    rtt: pd.DataFrame = field(default_factory=pd.DataFrame)
    sojourn: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def summarize(run_dir: str | Path, bin_s: float = BIN_S) -> dict[str, Any]:
    """Analyse a run, write summary.json and tables/, return the summary."""
    analysis = analyze(run_dir, bin_s)
    write(analysis)
    return analysis.summary


def analyze(run_dir: str | Path, bin_s: float = BIN_S) -> Analysis:
    """Compute everything, write nothing."""
    run = RunDir(run_dir)
    captures = _Captures(run)
    pkts, control = run.packets(), run.control()
    a = Analysis(run=run, t0=_t0(run, pkts))
    if queue.ensure(pkts).empty:
        a.notes.append("no per-packet telemetry: queue delay, marks and drops unknown")
    for flow in run.flows:
        rx, tx = captures.of(flow.get("dst"), flow), captures.of(flow.get("src"), flow)
        fig = flowmod.analyse_flow(flow, rx, tx, a.t0, bin_s)
        a.flows.append(fig)
        a.notes.extend(fig.notes)
    if not run.flows:
        a.notes.append("no flows in the manifest or flows/")
    a.notes.extend(captures.notes)
    a.notes.extend(capture_losses(run.path))
    a.flow_table = _flow_table(run, a.flows, a.notes)
    a.queue_table = _queue_table(pkts, run.sample_rate)
    a.sojourn = {cls: queue.sojourn(pkts, cls) for cls in CLASSES}
    a.timeseries = _timeseries(a, pkts, control, bin_s)
    a.rtt = _rtt_table(a)
    a.summary = _summary(a, pkts, control)
    _dynamics(a, pkts)
    return a


def _dynamics(a: Analysis, pkts: pd.DataFrame) -> None:
    """A link that changed during the run: the capacity in force goes into the time series
    (for the throughput plot), utilisation is taken against it, and the per-change figures
    go into summary['dynamics'] (analysis/dynamics.py)."""
    cap = dynmod.read_capacity(a.run.path)
    if not cap:
        return
    if not a.timeseries.empty and "t" in a.timeseries:
        t = a.timeseries["t"].to_numpy(np.float64)
        a.timeseries["capacity_mbps"] = dynmod.capacity_series(cap, a.t0, t)
    duration = a.run.scenario_duration_s or a.run.duration_s or 0.0
    if queue.ensure(pkts).empty or not duration:
        a.summary["notes"].append("dynamic link: no per-packet telemetry, so no per-change figures")
        a.summary["dynamics"] = clean({"kind": cap.get("kind"), "changes": [], "intervals": []})
        return
    try:
        dyn = dynmod.of_run(cap, pkts, duration, a.run.manifest.get("policy_args"), a.run.sample_rate)
    except (KeyError, TypeError, ValueError) as e:  # a damaged record must not cost the rest
        a.summary["notes"].append(f"dynamic link: unreadable telemetry/capacity.json ({e})")
        return
    a.summary["utilization_nominal"] = a.summary.get("utilization")
    a.summary["utilization"] = dyn["utilization"]
    a.summary["capacity_mean_mbps"] = dyn["capacity_mean_mbps"]
    a.summary["dynamics"] = clean(dyn)


class _Captures:
    """Reads each pcap once; picks, for a flow, the host's capture that carried it."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.cache: dict[Path, pd.DataFrame | None] = {}
        self.notes: list[str] = []

    def read(self, path: Path) -> pd.DataFrame | None:
        if path not in self.cache:
            try:
                self.cache[path] = read_pcap(path)
            except (OSError, ValueError) as e:
                self.notes.append(f"cannot read {path.name}: {e}")
                self.cache[path] = None
        return self.cache[path]

    def of(self, host: str | None, flow: dict[str, Any]) -> pd.DataFrame | None:
        if not host:
            return None
        dport = (flow.get("ports") or {}).get("dport")
        best, best_n = None, -1
        for path in self.run.pcaps(host):
            pkts = self.read(path)
            if pkts is None:
                continue
            n = int(((pkts["dport"] == dport) | (pkts["sport"] == dport)).sum()) if dport else 0
            if n > best_n:
                best, best_n = pkts, n
        return best


def capture_losses(run_dir: Path) -> list[str]:
    """Notes for captures that missed packets, from tcpdump's own counts in
    logs/tcpdump-<host>-<iface>.log: drops in the kernel, or packets the filter passed but
    tcpdump never wrote (stopped with a buffer still in flight)."""
    notes = []
    for log in sorted((run_dir / "logs").glob("tcpdump-*.log")):
        text = log.read_text(errors="replace")
        counts = {k: int(m.group(1)) for k, pat in (("captured", r"(\d+) packets? captured"),
                                                     ("received", r"(\d+) packets? received by filter"),
                                                     ("dropped", r"(\d+) packets? dropped by kernel"))
                  if (m := re.search(pat, text))}
        missed = max(counts.get("received", 0) - counts.get("captured", 0), 0) + counts.get("dropped", 0)
        if missed:
            notes.append(f"{log.stem.removeprefix('tcpdump-')}: tcpdump missed {missed} packets "
                         f"({counts}); figures from that pcap are short")
    return notes


def _t0(run: RunDir, pkts: pd.DataFrame) -> float:
    """The origin of every time axis: the run's start, else the first telemetry packet, else
    the earliest start in the flow reports."""
    if run.started is not None:
        return run.started
    first = queue.window(pkts)[0]
    if math.isfinite(first):
        return first
    starts = [f.get(k) for f in run.flows for k in ("scenario_start", "start")]
    starts = [float(t) for t in starts if isinstance(t, (int, float)) and not isinstance(t, bool)]
    return min(starts) if starts else 0.0


# ---- tables

def _flow_table(run: RunDir, figs: list[flowmod.FlowFigures], notes: list[str]) -> pd.DataFrame:
    rows = []
    for flow, fig in zip(run.flows, figs, strict=True):
        reported = _count(flow.get("retransmits"))
        retx = fig.retransmits if fig.retransmits is not None else reported
        if fig.retransmits is not None and reported is not None and \
                abs(fig.retransmits - reported) > max(3, 0.1 * reported):
            notes.append(f"flow {fig.name}: {fig.retransmits} retransmits in the sender pcap, "
                         f"{reported} in the flow's report")
        rtt = fig.rtt["rtt_ms"].to_numpy()
        row = {"name": fig.name, "kind": flow.get("kind"), "ecn": flow.get("ecn"), "cls": flow_class(flow),
               "cc": flow.get("cc"), "src": flow.get("src"), "dst": flow.get("dst"), "proto": fig.proto,
               "goodput_mbps": fig.goodput_mbps, "throughput_mbps": fig.throughput_mbps,
               "bytes": fig.bytes, "retransmits": retx, "retransmits_pcap": fig.retransmits,
               "retransmits_report": reported,
               "rtt_ms_p50": float(np.percentile(rtt, 50)) if rtt.size else np.nan,
               "rtt_ms_p95": float(np.percentile(rtt, 95)) if rtt.size else np.nan,
               "rtt_source": fig.rtt_source, "packets_sent": fig.packets_sent,
               "packets_received": fig.packets_received, "loss": _loss(fig),
               "first": fig.first, "last": fig.last, "d_ss_mbps": steady.d_ss_mbps(flow)}
        row.update({f"ecn_{k}": fig.ecn_counts.get(k) for k in flowmod.ECN_NAMES})
        rows.append(row)
    return pd.DataFrame(rows)


def _count(value: Any) -> int | None:
    """An integer count, or None for anything missing or not a number (NaN included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
        return None
    return int(value)


def _loss(fig: flowmod.FlowFigures) -> float:
    """Fraction of the UDP packets sent that never arrived (needs both captures)."""
    if fig.proto != "udp" or not fig.packets_sent or fig.packets_received is None:
        return np.nan
    return max(0.0, 1.0 - fig.packets_received / fig.packets_sent)


def _queue_table(pkts: pd.DataFrame, sample_rate: float) -> pd.DataFrame:
    delays, counted = queue.delay_percentiles(pkts), queue.counts(pkts, sample_rate)
    rows = []
    for cls in CLASSES:
        row = {"cls": cls, **delays[cls]}
        row.update({key: counted[key][cls] for key in counted})
        row["samples"] = int(queue.sojourn(pkts, cls).size)
        rows.append(row)
    return pd.DataFrame(rows)


def _timeseries(a: Analysis, pkts: pd.DataFrame, control: pd.DataFrame, bin_s: float) -> pd.DataFrame:
    """One row per bin (t = seconds since the run's start), a column per series."""
    frames = []
    for fig in a.flows:
        if not fig.timeseries.empty:
            frames.append(fig.timeseries.set_index("t").add_prefix(f"{fig.name}_"))
    for frame in (queue.delay_over_time(pkts, a.t0, bin_s),
                  queue.probability_over_time(pkts, control, a.t0, bin_s)):
        if not frame.empty:
            frames.append(frame.set_index("t"))
    if not frames:
        return pd.DataFrame({"t": []})
    return pd.concat(frames, axis=1).sort_index().rename_axis("t").reset_index()


def _rtt_table(a: Analysis) -> pd.DataFrame:
    parts = [pd.DataFrame({"t": fig.rtt["t"].to_numpy() - a.t0, "flow": fig.name,
                           "rtt_ms": fig.rtt["rtt_ms"].to_numpy()}) for fig in a.flows if not fig.rtt.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"t": [], "flow": [], "rtt_ms": []})


# ---- the summary

def _summary(a: Analysis, pkts: pd.DataFrame, control: pd.DataFrame) -> dict[str, Any]:
    run, ft = a.run, a.flow_table
    rate = run.link_rate_bps
    if rate is None:
        a.notes.append("no bottleneck rate in the manifest: utilisation unknown")
    counted = queue.counts(pkts, run.sample_rate)
    has_telemetry = not queue.ensure(pkts).empty
    out: dict[str, Any] = {
        "run_id": run.run_id, "status": run.status, "policy": run.policy,
        "policy_args": run.manifest.get("policy_args") or {}, "datapath": run.datapath,
        "duration_s": run.duration_s if run.duration_s is not None else _pcap_span(ft),
        "link_rate_mbps": rate / 1e6 if rate else None,
        "utilization": _utilisation(a, pkts, rate),
        "queue_delay_ms": {cls: {k: a.queue_table.set_index("cls").loc[cls, k] for k in queue.PERCENTILES}
                           for cls in CLASSES},
        "marks": {cls: counted["marks"][cls] if has_telemetry else None for cls in CLASSES},
        "drops": {cls: counted["drops"][cls] if has_telemetry else None for cls in CLASSES},
        "jain_index": jain(ft["goodput_mbps"].to_numpy(np.float64)) if not ft.empty else None,
        "l4s_classic_rate_ratio": rate_ratio(ft),
        # heistp/l4s-tests' fairness: Jain over the flows' steady-state delivery rates
        "jain_d_ss": steady.jain([None if pd.isna(v) else v for v in ft["d_ss_mbps"]])
        if not ft.empty else None,
        "flows": [_flow_entry(row) for row in ft.to_dict("records")],
        "sample_rate": run.sample_rate,
    }
    out.update(queue.control_figures(control))
    out["notes"] = list(dict.fromkeys(a.notes))  # in order, once each
    return clean(out)


def _flow_entry(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in ("name", "kind", "ecn", "cls", "goodput_mbps", "throughput_mbps", "rtt_ms_p50",
                               "rtt_ms_p95", "rtt_source", "d_ss_mbps")}
    out["retransmits"] = _count(row["retransmits"])
    out["ecn_counts"] = {n: _count(row[f"ecn_{n}"]) for n in flowmod.ECN_NAMES}
    return out


def _utilisation(a: Analysis, pkts: pd.DataFrame, rate: float | None) -> float:
    """From the telemetry when there is some; else from the bytes the receivers captured."""
    if not queue.ensure(pkts).empty:
        return queue.utilisation(pkts, rate, a.run.sample_rate)
    seen = [f for f in a.flows if np.isfinite(f.first) and np.isfinite(f.last)]
    if not rate or not seen:
        return np.nan
    first, last = min(f.first for f in seen), max(f.last for f in seen)
    if not last > first:
        return np.nan
    a.notes.append("utilisation from the receivers' pcaps (IP bytes of the flows), not from telemetry")
    return sum(f.wire_bytes for f in seen) * 8 / (rate * (last - first))


def _pcap_span(ft: pd.DataFrame) -> float | None:
    if ft.empty or not ft["first"].notna().any():
        return None
    return float(np.nanmax(ft["last"]) - np.nanmin(ft["first"]))


def jain(values: np.ndarray) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2) over the finite values; NaN if none."""
    x = values[np.isfinite(values)]
    if x.size == 0 or not np.any(x):
        return np.nan
    return float(x.sum() ** 2 / (x.size * (x**2).sum()))


def rate_ratio(ft: pd.DataFrame) -> float:
    """Sum of the L4S flows' goodput over the classic flows'; NaN without both kinds."""
    if ft.empty:
        return np.nan
    by = ft.groupby("cls")["goodput_mbps"].sum(min_count=1)
    l4s, classic = by.get("l4s", np.nan), by.get("classic", np.nan)
    return float(l4s / classic) if classic and np.isfinite(classic) and classic > 0 else np.nan


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


# ---- writing

def write(a: Analysis) -> None:
    """summary.json (atomically) and tables/{flows,queue_delay,timeseries,rtt}.{parquet,csv}."""
    tables = a.run.path / "tables"
    tables.mkdir(exist_ok=True)
    for name, frame in (("flows", a.flow_table), ("queue_delay", a.queue_table),
                        ("timeseries", a.timeseries), ("rtt", a.rtt)):
        write_table(frame, tables / name)
    atomic_write(a.run.path / "summary.json", strictjson.dumps(a.summary, indent=1) + "\n")


def write_table(frame: pd.DataFrame, stem: Path) -> None:
    for suffix in (".parquet", ".csv"):
        path = stem.with_suffix(suffix)
        tmp = path.with_name(path.name + ".tmp")
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.replace(tmp, path)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
