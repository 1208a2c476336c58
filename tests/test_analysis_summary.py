"""A whole results directory built from known parts: summary, tables, plots, report,
comparison, Flent export and the click commands; and runs with pieces missing."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scapy.all import IP, UDP, Ether, Raw, wrpcap
from test_analysis_flows import MSS, T0, _at, tcp_flow
from test_analysis_queue import telemetry

from orchestrator.analysis import analyze, compare, flent, summarize
from orchestrator.commands import analysis as commands
from policies.telemetry import PartWriter

RATE = 40e6
A_GOODPUT = 20 * MSS * 8 / 0.210 / 1e6  # first arrival at 8 ms, last at 218 ms (see tcp_flow)
U_GOODPUT = 45 * 500 * 8 / 0.098 / 1e6  # 45 of 50 packets, 2 ms apart, first to last 98 ms


def make_run(root: Path, policy: str = "dualpi2") -> Path:
    """Flow 'a' (L4S, TCP, sender s1) and 'u' (UDP ECT(0), sender s2) to rx; telemetry of
    1000 packets per class sampled at 1/2; ten control updates, two of them late."""
    flows = [{"name": "a", "kind": "l4s", "src": "s1", "dst": "rx", "cc": "prague", "ecn": "ect1"},
             {"name": "u", "kind": "udp", "src": "s2", "dst": "rx", "ecn": "ect0"}]
    spec = {"name": "t", "links": [{"a": "s1", "b": "r1"},
                                   {"a": "r1", "b": "rx", "bottleneck": {"rate": "40mbit"}}]}
    manifest = {"run_id": root.name, "status": "complete", "policy": policy,
                "policy_args": {"target": "15ms"}, "datapath": "nfqueue", "spec": spec,
                "scenario": {"duration": "1s"}, "flows": flows, "started": T0, "ended": T0 + 1.0,
                "versions": {"kernel": "6.18"}, "seed": 1}
    (root / "flows").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "flows" / "a.json").write_text(json.dumps(
        {"name": "a", "ports": {"sport": 40000, "dport": 5201}, "proto": "tcp", "retransmits": 2}))
    (root / "flows" / "u.json").write_text(json.dumps(
        {"name": "u", "ports": {"sport": 50000, "dport": 6000}, "proto": "udp"}))
    sent, got = tcp_flow(ce=(0, 7, 8))
    usent = [_at(Ether() / IP(src="10.0.1.1", dst="10.0.2.2", tos=2) / UDP(sport=50000, dport=6000)
                 / Raw(b"u" * 500), i * 2) for i in range(50)]
    ugot = [_at(p.copy(), i * 2 + 8) for i, p in enumerate(usent) if i % 10 != 3]
    (root / "pcap").mkdir()
    wrpcap(str(root / "pcap" / "s1-eth0.pcap"), sent)
    wrpcap(str(root / "pcap" / "s2-eth0.pcap"), usent)
    wrpcap(str(root / "pcap" / "rx-eth0.pcap"), sorted(got + ugot, key=lambda p: p.time))
    packets = PartWriter(root / "telemetry" / "packets", meta={"sample_rate": 0.5, "datapath": "nfqueue"})
    pkts = telemetry()
    packets.write_frame(pkts.iloc[:1000])
    packets.write_frame(pkts.iloc[1000:])
    PartWriter(root / "telemetry" / "control").write_frame(pd.DataFrame({
        "t": T0 + np.arange(10) * 0.1 + 0.01, "l4s_p_mark": np.arange(10) / 10, "l4s_p_drop": 0.0,
        "classic_p_mark": 0.0, "classic_p_drop": 0.01, "missed": [False] * 8 + [True] * 2,
        "decide_us": np.arange(10) * 100.0}))
    return root


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run-1")


def test_summary_figures_match_the_inputs(run: Path) -> None:
    s = summarize(run)
    assert (s["status"], s["policy"], s["datapath"]) == ("complete", "dualpi2", "nfqueue")
    assert (s["duration_s"], s["link_rate_mbps"]) == (1.0, 40.0)
    a, u = s["flows"]
    assert a["goodput_mbps"] == pytest.approx(A_GOODPUT, rel=1e-5)
    assert u["goodput_mbps"] == pytest.approx(U_GOODPUT, rel=1e-5)
    assert (a["retransmits"], a["rtt_ms_p50"], a["ecn_counts"]["ce"]) == (2, pytest.approx(20, abs=1e-3), 3)
    jain = (A_GOODPUT + U_GOODPUT) ** 2 / (2 * (A_GOODPUT**2 + U_GOODPUT**2))
    assert s["jain_index"] == pytest.approx(jain, rel=1e-5)
    assert s["l4s_classic_rate_ratio"] == pytest.approx(A_GOODPUT / U_GOODPUT, rel=1e-5)
    assert s["queue_delay_ms"]["l4s"]["p99"] == pytest.approx(9.8901, abs=1e-5)
    assert s["queue_delay_ms"]["classic"]["p50"] == pytest.approx(59.8, abs=1e-4)
    assert (s["marks"], s["drops"]) == ({"l4s": 14, "classic": 0}, {"l4s": 0, "classic": 6})
    window = 0.9965 + 0.1096 - 0.0005  # first arrival to the last classic departure
    assert s["utilization"] == pytest.approx((1000 + 997) * 1250 * 8 / 0.5 / (RATE * window), rel=1e-6)
    assert (s["decisions"], s["missed_deadlines"]) == (10, 2)
    assert s["notes"] == []


def test_summary_json_is_strict_and_tables_are_written(run: Path) -> None:
    summarize(run)

    def no_nan(name: str) -> None:
        raise AssertionError(f"{name} in summary.json")

    on_disk = json.loads((run / "summary.json").read_text(), parse_constant=no_nan)
    assert on_disk["flows"][1]["rtt_ms_p50"] is None
    for name in ("flows", "queue_delay", "timeseries", "rtt"):
        assert pd.read_csv(run / "tables" / f"{name}.csv").shape == pd.read_parquet(
            run / "tables" / f"{name}.parquet").shape
    ts = pd.read_parquet(run / "tables" / "timeseries.parquet")
    for col in ("a_goodput_mbps", "u_throughput_mbps", "l4s_delay_p50_ms", "l4s_p_mark",
                "classic_dropped_frac"):
        assert col in ts
    assert ts["a_goodput_mbps"].sum() * 0.1 * 1e6 / 8 == pytest.approx(20 * MSS)


def test_missing_pieces_give_notes_not_crashes(run: Path) -> None:
    """An aborted run: no telemetry, no end time, a pcap cut mid-record (tcpdump killed), a
    sender's pcap and a flow report missing."""
    shutil.rmtree(run / "telemetry")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(status="aborted", ended=None)
    (run / "manifest.json").write_text(json.dumps(manifest))
    rx = run / "pcap" / "rx-eth0.pcap"
    rx.write_bytes(rx.read_bytes()[:-20])
    (run / "pcap" / "s2-eth0.pcap").unlink()
    (run / "flows" / "u.json").unlink()
    s = summarize(run)
    assert s["status"] == "aborted" and s["duration_s"] == 1.0  # from the scenario
    assert s["queue_delay_ms"]["l4s"]["p50"] is None and s["marks"]["l4s"] is None
    assert s["flows"][0]["goodput_mbps"] > 0 and s["flows"][1]["goodput_mbps"] is None
    assert s["utilization"] > 0  # from the pcaps
    notes = " | ".join(s["notes"])
    assert "no per-packet telemetry" in notes and "flow u: no ports" in notes and "pcaps" in notes
    assert s["missed_deadlines"] is None
    analyze(run)  # plots and report cope too
    assert (run / "report.html").exists()


def test_a_directory_with_almost_nothing(tmp_path: Path) -> None:
    (tmp_path / "bare").mkdir()
    s = summarize(tmp_path / "bare")
    assert s["status"] == "aborted" and s["flows"] == [] and s["jain_index"] is None
    (tmp_path / "junk" / "pcap").mkdir(parents=True)
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    (tmp_path / "junk" / "pcap" / "rx-eth0.pcap").write_bytes(b"garbage" * 10)
    assert summarize(tmp_path / "junk")["status"] == "aborted"


def test_analyze_writes_plots_and_a_self_contained_report(run: Path) -> None:
    analyze(run)
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == ["probability.png", "queue_delay.png", "queue_delay_cdf.png", "throughput.png"]
    for p in (run / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "src='plots/" not in page
    assert "dualpi2" in page and "run-1" in page and "9.89" in page


def test_compare_runs_side_by_side(tmp_path: Path) -> None:
    one, two = make_run(tmp_path / "r1"), make_run(tmp_path / "r2", policy="fifo")
    frame = compare.compare([one, two])
    assert list(frame.index) == ["r1", "r2"] and list(frame["policy"]) == ["dualpi2", "fifo"]
    assert frame.loc["r1", "l4s_p99_ms"] == pytest.approx(9.8901, abs=1e-5)
    assert frame.loc["r2", "missed_deadlines"] == 2
    text = compare.render(frame)
    assert "fifo" in text and "dualpi2" in text and "classic_p50_ms" in text
    png = compare.plot([one, two], tmp_path / "cmp.png", frame)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_flent_export_loads_in_flent(run: Path, tmp_path: Path) -> None:
    path = flent.export(run, tmp_path / "x.flent.gz")
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    assert set(data) == {"metadata", "x_values", "results", "raw_values", "version"}
    assert all(len(v) == len(data["x_values"]) for v in data["results"].values())
    assert data["metadata"]["SERIES_META"]["TCP upload::1"]["FLOW"] == "a"
    from flent import resultset  # installed by setup (dev extra): a missing flent is a failure
    loaded = resultset.load(str(path))
    assert loaded.meta("NAME") == "tcp_nup"
    goodput = [v for v in loaded.series("TCP upload::1") if v is not None]
    assert sum(goodput) * 0.1 * 1e6 / 8 == pytest.approx(20 * MSS)
    pings = [v for _, v in loaded.raw_series("Ping (ms) ICMP")]
    assert len(pings) == 21 and np.allclose(pings, 20, atol=1e-3)


def test_flent_plots_our_file(run: Path, tmp_path: Path) -> None:
    exe = shutil.which("flent") or str(Path(__import__("sys").executable).with_name("flent"))
    assert Path(exe).exists(), "flent missing: it is in the dev extras (scripts/setup.sh)"
    path = flent.export(run, tmp_path / "x.flent.gz")
    subprocess.run([exe, "-i", str(path), "-p", "upload_with_ping", "-o", str(tmp_path / "f.png")],
                   check=True, capture_output=True, timeout=120)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_click_commands(tmp_path: Path) -> None:
    one, two = make_run(tmp_path / "r1"), make_run(tmp_path / "r2", policy="fifo")
    cli = CliRunner()
    out = cli.invoke(commands.analyze, [str(one)])
    assert out.exit_code == 0, out.output
    assert "report.html" in out.output and (one / "summary.json").exists()
    out = cli.invoke(commands.compare, [str(one), str(two), "--plot", str(tmp_path / "c.png")])
    assert out.exit_code == 0 and "fifo" in out.output and (tmp_path / "c.png").exists()
    out = cli.invoke(commands.report, [str(one), str(two), "--out", str(tmp_path / "both.html")])
    assert out.exit_code == 0 and (tmp_path / "both.html").read_text().count("<section>") == 2
    out = cli.invoke(commands.export_flent, [str(two), "--out", str(tmp_path / "two.flent.gz")])
    assert out.exit_code == 0 and (tmp_path / "two.flent.gz").exists()
    out = cli.invoke(commands.analyze, [str(tmp_path / "nope")])
    assert out.exit_code != 0 and "no such run directory" in str(out.exception)


def test_capture_losses_reported_from_tcpdump_logs(run: Path) -> None:
    """tcpdump stopped with a buffer in flight says so in its counts; the summary passes it on."""
    (run / "logs").mkdir()
    (run / "logs" / "tcpdump-rx-eth0.log").write_text(
        "listening on eth0\n9037 packets captured\n9238 packets received by filter\n"
        "0 packets dropped by kernel\n")
    (run / "logs" / "tcpdump-s1-eth0.log").write_text(
        "10 packets captured\n10 packets received by filter\n0 packets dropped by kernel\n")
    notes = summarize(run)["notes"]
    assert len(notes) == 1 and notes[0].startswith("rx-eth0: tcpdump missed 201 packets")
