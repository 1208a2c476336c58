"""Export a run to Flent's data format, so Flent's plots (`flent -i RUN.flent.gz -p ...`) work.

A `.flent.gz` file is gzipped JSON (format version 4, flent/resultset.py): `metadata`
(test NAME, TIME and T0 as ISO UTC stamps, STEP_SIZE, LENGTH, SERIES_META, ...), `x_values`
(seconds since T0, one per step), `results` (series name -> one value or null per x) and
`raw_values` (series name -> [{"t": epoch s, "val": value, ...}]).

A run is presented as Flent's `tcp_nup` test: one 'TCP upload::<i>' series per TCP flow
(i = 1..N as tcp_nup names its streams, the flow's name in SERIES_META[...]['FLOW'] and in
NOTE; goodput in Mbit/s; raw points also carry 'tcp_rtt' so Flent's TCP-RTT plots work),
their sum, average and Jain fairness, and 'Ping (ms) ICMP' from the flows' RTT samples (TCP
timestamps, not ICMP: Flent's plots look the series up by that name). UDP flows and per-class
queue delay are extra series ('UDP upload::<i>', 'Queue delay (ms) <class>').
"""

from __future__ import annotations

import gzip
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator import strictjson
from orchestrator.analysis import report, summary
from orchestrator.analysis.rundir import RunDir
from policies.base import CLASSES

FORMAT_VERSION = 4
TEST_NAME = "tcp_nup"


def export(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write <run>/<run-id>.flent.gz (or `out`); returns the path."""
    run = RunDir(run_dir)
    s = report.ensure_analysed(run.path)
    ts = _read(run.path / "tables" / "timeseries.parquet")
    rtt = _read(run.path / "tables" / "rtt.parquet")
    data = resultset(run, s, ts, rtt)
    path = Path(out) if out else run.path / f"{run.run_id}.flent.gz"
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.write(strictjson.dumps(data))
    tmp.replace(path)
    return path


def _read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.exists() else pd.DataFrame({"t": []})


def resultset(run: RunDir, s: dict[str, Any], ts: pd.DataFrame, rtt: pd.DataFrame) -> dict[str, Any]:
    """The JSON object of a Flent data file."""
    t0 = run.started if run.started is not None else 0.0
    step = float(np.median(np.diff(ts["t"]))) if len(ts) > 1 else summary.BIN_S
    x = np.round(ts["t"].to_numpy(np.float64), 9)
    results: dict[str, list[Any]] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    meta: dict[str, dict[str, Any]] = {}
    tcp = [f["name"] for f in s.get("flows") or [] if f.get("kind") != "udp"]
    udp = [f["name"] for f in s.get("flows") or [] if f.get("kind") == "udp"]
    for prefix, names in (("TCP upload::", tcp), ("UDP upload::", udp)):
        for i, name in enumerate(names, start=1):  # tcp_nup numbers its streams from 1
            col = f"{name}_goodput_mbps"
            if col in ts:
                _add(results, raw, meta, f"{prefix}{i}", x, ts[col], t0, "Mbits/s", _rtt_by_bin(rtt, name, x))
                meta[f"{prefix}{i}"]["FLOW"] = name
    uploads = pd.DataFrame({n: ts[f"{n}_goodput_mbps"] for n in tcp if f"{n}_goodput_mbps" in ts})
    if not uploads.empty:
        _add(results, raw, meta, "TCP upload sum", x, uploads.sum(axis=1, min_count=1), t0, "Mbits/s")
        _add(results, raw, meta, "TCP upload avg", x, uploads.mean(axis=1), t0, "Mbits/s")
        _add(results, raw, meta, "TCP upload fairness", x, uploads.apply(_jain_row, axis=1), t0, "Idx")
    _add(results, raw, meta, "Ping (ms) ICMP", x, _per_bin(rtt, x), t0, "ms")
    raw["Ping (ms) ICMP"] = [{"t": float(t0 + t), "val": float(v), "flow": str(f)}  # every sample, unbinned
                             for t, v, f in zip(rtt["t"], rtt["rtt_ms"], rtt["flow"], strict=True)]
    for cls in CLASSES:
        if f"{cls}_delay_p50_ms" in ts:
            _add(results, raw, meta, f"Queue delay (ms) {cls}", x, ts[f"{cls}_delay_p50_ms"], t0, "ms")
    return {"version": FORMAT_VERSION, "x_values": x.tolist(), "results": results, "raw_values": raw,
            "metadata": _metadata(run, s, t0, step, len(tcp), meta, x)}


def _add(results: dict, raw: dict, meta: dict, name: str, x: np.ndarray, values: pd.Series, t0: float,
         units: str, extra: pd.Series | None = None) -> None:
    v = pd.to_numeric(pd.Series(values).reset_index(drop=True), errors="coerce")
    results[name] = [None if not np.isfinite(val) else float(val) for val in v]
    points = []
    for i, val in enumerate(v):
        if np.isfinite(val):
            point = {"t": float(t0 + x[i]), "val": float(val)}
            if extra is not None and np.isfinite(extra.iloc[i]):
                point["tcp_rtt"] = float(extra.iloc[i])
            points.append(point)
    raw[name] = points
    finite = v[np.isfinite(v)]
    meta[name] = {"UNITS": units, "MEAN_VALUE": float(finite.mean()) if len(finite) else None}


def _rtt_by_bin(rtt: pd.DataFrame, flow: str, x: np.ndarray) -> pd.Series:
    mine = rtt[rtt["flow"] == flow] if "flow" in rtt else rtt.iloc[0:0]
    return _per_bin(mine, x)


def _per_bin(samples: pd.DataFrame, x: np.ndarray) -> pd.Series:
    """Mean of the samples falling in each bin [x_i, x_i+1)."""
    out = pd.Series(np.nan, index=range(len(x)))
    if samples.empty or len(x) == 0:
        return out
    k = np.searchsorted(x, samples["t"].to_numpy(np.float64), side="right") - 1
    ok = k >= 0
    means = pd.Series(samples["rtt_ms"].to_numpy(np.float64)[ok]).groupby(k[ok]).mean()
    out.loc[means.index] = means.to_numpy()
    return out


def _jain_row(row: pd.Series) -> float:
    return summary.jain(row.to_numpy(np.float64))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _metadata(run: RunDir, s: dict[str, Any], t0: float, step: float, streams: int,
              series: dict[str, dict[str, Any]], x: np.ndarray) -> dict[str, Any]:
    hosts = sorted({f.get("dst") for f in run.flows if f.get("dst")})
    streams_note = ", ".join(f"{k}={v['FLOW']}" for k, v in series.items() if "FLOW" in v)
    length = s.get("duration_s") or (float(x[-1]) if len(x) else 0.0)
    return {
        "NAME": TEST_NAME, "TITLE": f"{run.run_id} {s.get('policy') or ''}".strip(),
        "NOTE": f"exported from l4s-testbed run {run.run_id}; streams: {streams_note}; "
                "'Ping (ms) ICMP' holds the flows' TCP RTT samples, not ICMP",
        "TIME": _iso(t0), "T0": _iso(t0), "LENGTH": length, "TOTAL_LENGTH": length, "STEP_SIZE": step,
        "HOST": hosts[0] if hosts else None, "HOSTS": hosts, "LOCAL_HOST": None, "IP_VERSION": 4,
        "TEST_PARAMETERS": {"upload_streams": streams, "policy": s.get("policy"),
                            "datapath": s.get("datapath")},
        "FLENT_VERSION": "l4s-testbed", "DATA_FILENAME": f"{run.run_id}.flent.gz",
        "SERIES_META": series,
    }
