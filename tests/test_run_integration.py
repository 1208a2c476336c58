"""`testbed run` end to end, and its figures checked against the raw data computed here."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import dpkt
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, TESTBED, dumbbell_yaml, needs_root, run_cli, unique_name

pytestmark = [needs_root, pytest.mark.integration, pytest.mark.slow]

SCENARIO = """scenario:
  duration: 8s
  flows:
    - {name: l4s, kind: l4s, src: s1, dst: rx}
    - {name: cubic, kind: tcp, src: s2, dst: rx, cc: cubic}
"""


def receiver_payload(pcap: Path, dport: int) -> tuple[int, float, float]:
    """Unique TCP payload bytes towards dport, first and last data packet time (dpkt, not ours)."""
    seen: set[int] = set()
    total, first, last = 0, None, None
    with open(pcap, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            length = ip.len - ip.hl * 4 - tcp.off * 4
            if tcp.dport != dport or length <= 0 or tcp.seq in seen:
                continue
            seen.add(tcp.seq)
            total += length
            first = ts if first is None else first
            last = ts
    return total, first, last


def percentiles_from_log(run: Path) -> dict[str, dict[str, float]]:
    log = pd.concat(pd.read_parquet(p) for p in sorted((run / "telemetry/packets").glob("part-*.parquet")))
    out = {}
    for cls, name in ((0, "l4s"), (1, "classic")):
        sojourn = log.loc[(log.cls == cls) & (log.action != 1), "sojourn_ms"].astype(float).dropna()
        out[name] = {"p50": float(np.percentile(sojourn, 50)), "p99": float(np.percentile(sojourn, 99)),
                     "drops": int(((log.cls == cls) & (log.action == 1)).sum()),
                     "marks": int(((log.cls == cls) & (log.action == 2)).sum())}
    return out


def run_policy(name: str, policy: str, results: Path, *args: str) -> Path:
    res = run_cli("run", "--testbed", name, "--policy", policy, "--results", str(results), *args,
                  timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = sorted(results.glob(f"*-{policy}-*"))
    assert len(runs) == 1
    return runs[0]


def check_against_raw(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    assert summary["status"] == manifest["status"] == "complete"
    sample = json.loads((run / "telemetry/packets/meta.json").read_text()).get("sample_rate", 1.0)
    assert sample == 1.0  # 50 Mbit/s is logged in full
    raw = percentiles_from_log(run)
    for cls in ("l4s", "classic"):
        got = summary["queue_delay_ms"][cls]
        assert got["p50"] == pytest.approx(raw[cls]["p50"], rel=0.02, abs=0.02), cls
        assert got["p99"] == pytest.approx(raw[cls]["p99"], rel=0.02, abs=0.02), cls
        assert summary["drops"][cls] == raw[cls]["drops"]
        assert summary["marks"][cls] == raw[cls]["marks"]
    pcap = next((run / "pcap").glob("rx-*.pcap"))
    for flow in summary["flows"]:
        report = json.loads((run / "flows" / f"{flow['name']}.json").read_text())
        nbytes, first, last = receiver_payload(pcap, report["ports"]["dport"])
        assert nbytes > 0, flow
        assert flow["goodput_mbps"] == pytest.approx(nbytes * 8 / (last - first) / 1e6, rel=0.03), flow
    total = sum(f["goodput_mbps"] for f in summary["flows"])
    assert 0.85 <= summary["utilization"] <= 1.01
    assert total <= 50.5
    for key in ("jain_index", "l4s_classic_rate_ratio", "duration_s", "link_rate_mbps", "policy", "datapath"):
        assert key in summary
    assert (run / "report.html").stat().st_size > 10_000
    assert {p.name for p in (run / "plots").glob("*.png")} >= {"queue_delay_cdf.png", "throughput.png"}
    return summary


def test_dualpi2_and_fifo_runs_match_the_raw_data(netns_testbed, tmp_path):
    name = unique_name("ru")
    netns_testbed(dumbbell_yaml(name, scenario=SCENARIO))
    dual = check_against_raw(run_policy(name, "dualpi2", tmp_path / "dual"))
    # FIFO with a 1000-packet buffer, as bufferbloat looks (issue 4's comparison)
    fifo = check_against_raw(run_policy(name, "fifo", tmp_path / "fifo", "--policy-arg", "limit=1000"))
    # the test tells a working AQM from none
    assert dual["queue_delay_ms"]["l4s"]["p99"] < 3.0
    assert dual["marks"]["l4s"] > 0
    assert fifo["marks"]["l4s"] == 0 and fifo["marks"]["classic"] == 0
    assert fifo["queue_delay_ms"]["classic"]["p50"] > max(40.0, 2 * dual["queue_delay_ms"]["classic"]["p50"])


def test_interrupted_run_keeps_its_results_marked_aborted(netns_testbed, tmp_path):
    name = unique_name("ab")
    netns_testbed(dumbbell_yaml(name, scenario=SCENARIO))
    results = tmp_path / "res"
    proc = subprocess.Popen([*TESTBED, "run", "--testbed", name, "--policy", "dualpi2", "--duration", "120",
                             "--results", str(results)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(results.glob("*/flows/*.json")) \
            and not list(results.glob("*/pcap/*.pcap")):
        time.sleep(0.2)
    time.sleep(4)  # mid-traffic
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, out + err
    assert "aborted" in err and "Traceback" not in err
    run = next(results.iterdir())
    assert json.loads((run / "manifest.json").read_text())["status"] == "aborted"
    assert json.loads((run / "summary.json").read_text())["status"] == "aborted"
    from orchestrator.analysis.pcap import read_pcap

    pcaps = list((run / "pcap").glob("*.pcap"))
    assert pcaps and all(len(read_pcap(p)) > 100 for p in pcaps)
    log = pd.concat(pd.read_parquet(p) for p in (run / "telemetry/packets").glob("part-*.parquet"))
    assert len(log) > 1000
    # nothing of the run is left on the testbed: only the delay line runs
    status = json.loads(run_cli("status", name, "--json").stdout)[0]
    assert [p["tag"] for p in status["processes"]] == ["delayline"]


def test_killed_run_is_marked_aborted_by_the_next_look(tmp_path):
    from orchestrator.experiment import results

    run = tmp_path / "r1"
    run.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    results.write_json(run / "manifest.json", {"status": "running", "pid": dead.pid})
    assert results.mark_orphans(tmp_path) == [run]
    assert json.loads((run / "manifest.json").read_text())["status"] == "aborted"
