"""Steady-state delivery rate (D_SS), as heistp/l4s-tests' s1_steady_state.go computes it.

For each flow: the mean of the sender's nonzero TCP delivery-rate samples (tcp_info's
tcpi_delivery_rate, Flent's `tcp_delivery_rate`) whose time lies strictly inside a window of
`window_s` (60 s there) that ends `tail_s` (2 s) before the flow's last sample, so the flow's
shutdown never counts. Jain's index over the flows' D_SS is that script's fairness column.

iperf3 flows (kind tcp) carry no tcpi_delivery_rate: their samples are iperf3's per-interval
goodput (bytes written per 0.1 s), where zero is a real value (a window-limited sender writes
in bursts), not a missing estimate: for them D_SS is the mean of every sample in the window,
zeros included, i.e. the mean goodput over it. (Skipping the zeros as for delivery rates gave
84 Mbit/s on a 50 Mbit/s link.)
"""

from __future__ import annotations

from typing import Any

WINDOW_S = 60.0  # tstart := tlast - 62; tend := tstart + 60
TAIL_S = 2.0
_T, _RATE, _ACKED = 0, 3, 5  # tcp_info columns t, delivery_rate_bps, bytes_acked (tcpinfo.COLUMNS)


def d_ss_mbps(flow: dict[str, Any], window_s: float = WINDOW_S, tail_s: float = TAIL_S) -> float | None:
    """The flow's steady-state delivery rate in Mbit/s, or None without rate samples."""
    rows = [r for r in flow.get("tcp_info") or [] if r and r[_T] is not None]
    if not rows:
        return None
    t_end = max(r[_T] for r in rows) - tail_s
    t_start = t_end - window_s
    # the project's sender samples tcp_info (bytes_acked set): a zero rate is "no estimate yet"
    delivery_rate = rows[0][_ACKED] is not None
    rates = [float(r[_RATE] or 0) for r in rows
             if t_start < r[_T] < t_end and (r[_RATE] or not delivery_rate)]
    return sum(rates) / len(rates) / 1e6 if rates else None


def jain(values: list[float | None]) -> float | None:
    """Jain's index over the known values ((sum x)^2 / (n sum x^2)); None if none."""
    xs = [v for v in values if v is not None]
    if not xs or not any(xs):
        return None
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


def sweep_table(sweep_dir: Any) -> list[str]:
    """One line per point of a sweep: its values, each flow's D_SS (Mbit/s) and Jain over
    them, as the rows of l4s-tests' s1_table.md (read from each run's summary.json)."""
    import json
    from pathlib import Path

    root = Path(sweep_dir)
    data = json.loads((root / "sweep.json").read_text())
    lines = []
    for p in data["points"]:
        point = " ".join(f"{k}={v}" for k, v in sorted(p["point"].items()))
        path = root / str(p.get("run")) / "summary.json"
        if not p.get("run") or not path.exists():
            lines.append(f"{point}  ({p['status']}, no summary)")
            continue
        s = json.loads(path.read_text())
        flows = "  ".join(f"{f['name']} D_SS {_fmt(f.get('d_ss_mbps'))}" for f in s.get("flows", []))
        lines.append(f"{point}  {flows}  Jain {_fmt(s.get('jain_d_ss'), 3)}")
    return lines


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
