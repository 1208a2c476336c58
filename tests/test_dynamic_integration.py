"""Dynamic links with real traffic on the nfqueue datapath: a 50 -> 10 -> 50 Mbit/s step
and a Mahimahi trace, checked against the raw data (pcaps, the packet log)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.spec import dynamic
from orchestrator.spec import schedule as sm

from conftest import dumbbell_yaml, needs_root, unique_name

pytestmark = [needs_root, pytest.mark.integration, pytest.mark.slow]

PLATEAU_S = 4.0
STEP = [{"at": "0s", "rate": "50mbit"}, {"at": f"{PLATEAU_S}s", "rate": "10mbit"},
        {"at": f"{2 * PLATEAU_S}s", "rate": "50mbit"}]
# a saturated Ethernet link carries 1448 bytes of TCP payload (timestamps on) per 1514-byte frame
PAYLOAD_SHARE = 1448 / 1514


def run(tb, tmp_path: Path, dyn: dict, flows: list[dict], policy: str = "fifo",
        duration: float = 12.0) -> Path:
    from orchestrator.experiment.run import Run, RunConfig
    from orchestrator.spec.scenario import Scenario

    scenario = Scenario.model_validate({"duration": f"{duration}s", "flows": flows})
    config = RunConfig(policy=policy, results_root=tmp_path / "results", link_dynamics=dyn, seed=3)
    return Run(tb, scenario, config).execute()


def test_step_schedule_goodput_follows_each_plateau(netns_testbed, tmp_path):
    tb = netns_testbed(dumbbell_yaml(unique_name("dyn"), senders=1))
    d = run(tb, tmp_path, dynamic.parse({"rate": STEP}).to_json(),
            [{"name": "bulk", "kind": "tcp", "src": "s1", "dst": "rx", "cc": "cubic"}])
    cap = json.loads((d / "telemetry/capacity.json").read_text())
    t0 = cap["t0_epoch"]
    # the recorded capacity is the schedule: its steps, and every tupdate sample
    assert [(round(t - t0, 6), r) for t, r in cap["steps"]] == [(0.0, 50e6), (4.0, 10e6), (8.0, 50e6)]
    sched = sm.parse_steps(STEP, "rate")
    samples = [(t - t0, r) for t, r in cap["samples"] if t >= t0]
    assert len(samples) > 300
    assert all(r == sched.value_at(t) for t, r in samples)
    # goodput per plateau from the receiver's capture (dpkt-free: the flow's own time series
    # is checked in test_analysis_flows; here the bytes per window come from the pcap table)
    ts = pd.read_parquet(d / "tables/timeseries.parquet")
    manifest = json.loads((d / "manifest.json").read_text())
    shift = t0 - manifest["started"]  # the table's t counts from the run's start
    rtt = 0.02
    for k, rate in enumerate((50e6, 10e6, 50e6)):
        a, b = shift + k * PLATEAU_S + 2 * rtt, shift + (k + 1) * PLATEAU_S
        window = ts[(ts["t"] >= a) & (ts["t"] + 0.1 <= b)]
        goodput = window["bulk_goodput_mbps"].mean() * 1e6
        assert goodput == pytest.approx(rate * PAYLOAD_SHARE, rel=0.05), (k, goodput / rate)
    summary = json.loads((d / "summary.json").read_text())
    dyn = summary["dynamics"]
    assert [c["kind"] for c in dyn["changes"]] == ["drop", "rise"]
    assert [i["capacity_mbps"] for i in dyn["intervals"]] == pytest.approx([50, 10, 50])
    assert all(i["utilization"] > 0.93 for i in dyn["intervals"])


def test_trace_driven_delivery_follows_the_opportunities(netns_testbed, tmp_path):
    """UDP above the trace's rate keeps the queue full: every opportunity carries one
    1500-byte IP packet, so the packets delivered equal the opportunities (within 2%)."""
    from orchestrator.bottleneck import tracegen

    ms = tracegen.generate(tracegen.CellularModel(levels=(4.0, 8.0, 16.0), step_ms=200), 6.0, 5)
    path = tmp_path / "cell.trace"
    path.write_text("".join(f"{m}\n" for m in ms))
    tb = netns_testbed(dumbbell_yaml(unique_name("dyn"), rate="10mbit", senders=1, buffer="300p"))
    d = run(tb, tmp_path, dynamic.parse({"trace": str(path)}).to_json(),
            [{"name": "flood", "kind": "udp", "src": "s1", "dst": "rx", "rate": "30mbit",
              "packet_size": 1472}], duration=6.0)
    cap = json.loads((d / "telemetry/capacity.json").read_text())
    t0 = cap["t0_epoch"]
    trace = sm.MahimahiTrace(ms)
    log = pd.concat(pd.read_parquet(p) for p in sorted((d / "telemetry/packets").glob("part-*.parquet")))
    gone = log[np.isfinite(log["t_departure"].to_numpy(np.float64))]
    dep = gone["t_departure"].to_numpy(np.float64) - t0
    lo, hi = 0.5, 5.5  # the flow is on and the queue full: every opportunity is used
    delivered = int(((dep > lo) & (dep <= hi) & (gone["size"].to_numpy() == 1514)).sum())
    offered = trace.count(lo, hi)
    assert delivered == pytest.approx(offered, rel=0.02), (delivered, offered)
    # and each departure sits on an opportunity of the trace (ms resolution)
    on_grid = np.isin(np.round(dep[(dep > lo) & (dep <= hi)] * 1e3).astype(int) % trace.period_ms,
                      np.array(ms) % trace.period_ms)
    assert on_grid.mean() > 0.99


def test_drain_after_the_drop_is_worst_for_fifo(netns_testbed, tmp_path):
    """DualPI2, PIE and FIFO on the step: summary and report carry the peak delay and the
    drain time after the drop, and FIFO (a 1.5 BDP tail-drop buffer) drains last."""
    tb = netns_testbed(dumbbell_yaml(unique_name("dyn")))
    flows = [{"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx"},
             {"name": "cubic", "kind": "tcp", "src": "s2", "dst": "rx", "cc": "cubic"}]
    drains = {}
    for policy in ("dualpi2", "pie", "fifo"):
        d = run(tb, tmp_path / policy, dynamic.parse({"rate": STEP}).to_json(), flows, policy=policy)
        summary = json.loads((d / "summary.json").read_text())
        drop = next(c for c in summary["dynamics"]["changes"] if c["kind"] == "drop")
        assert drop["peak_delay_ms"]["classic"] > 15  # the drop builds a queue for everyone
        drains[policy] = drop["drain_s"] if drop["drained"] else float("inf")
        page = (d / "report.html").read_text()
        assert "Dynamic link: per change" in page and "classic drain (s)" in page
    assert drains["fifo"] > max(drains["dualpi2"], drains["pie"]), drains


@pytest.mark.parametrize("datapath, policy", [("kernel", "fifo"), ("ebpf", "dualpi2")])
def test_htb_datapaths_apply_the_schedule_from_a_timer(netns_testbed, tmp_path, datapath, policy):
    from orchestrator.experiment.run import Run, RunConfig
    from orchestrator.spec.scenario import Scenario

    tb = netns_testbed(dumbbell_yaml(unique_name("dyn"), senders=1))
    # a UDP flood keeps the link saturated whatever the AQM does: its goodput is the HTB rate
    scenario = Scenario.model_validate({"duration": "12s", "flows": [
        {"name": "bulk", "kind": "udp", "src": "s1", "dst": "rx", "rate": "70mbit", "packet_size": 1472}]})
    d = Run(tb, scenario, RunConfig(policy=policy, datapath=datapath, results_root=tmp_path,
                                    link_dynamics=dynamic.parse({"rate": STEP}).to_json())).execute()
    cap = json.loads((d / "telemetry/capacity.json").read_text())
    t0 = cap["t0_epoch"]
    assert [r for _, r in cap["steps"]] == [50e6, 10e6, 50e6]
    # each change took effect after it was due, and not much after (tc's start-up)
    for (applied, _), (due, _) in zip(cap["steps"], cap["due"], strict=True):
        assert 0 <= applied - due < 0.1
    assert [round(due - t0, 6) for due, _ in cap["due"]] == [0.0, 4.0, 8.0]
    assert cap["late_ms_p99"] is not None
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["datapath_counters"]["schedule"]["changes"] == 3
    # the kernel's HTB is back at the testbed's rate after the run
    shown = tb.run(tb.bottleneck.router, ["tc", "class", "show", "dev", tb.bottleneck.egress]).stdout
    assert "rate 50Mbit" in shown
    ts = pd.read_parquet(d / "tables/timeseries.parquet")
    shift = t0 - manifest["started"]
    for a, b, rate in ((1.0, 3.9, 50), (5.0, 7.9, 10), (9.0, 11.5, 50)):
        got = ts[(ts["t"] >= shift + a) & (ts["t"] < shift + b)]["bulk_goodput_mbps"].mean()
        assert got == pytest.approx(rate * 1472 / 1514, rel=0.05), (a, got)


def test_rtt_schedule_on_the_delay_line(netns_testbed, tmp_path):
    """The delay line restarts with the schedule; a flow's RTT follows it; the testbed's own
    delay line is back afterwards."""
    name = unique_name("dyn")
    tb = netns_testbed(dumbbell_yaml(name, senders=1))
    dyn = dynamic.parse({"rtt": [{"at": "0s", "rtt": "20ms"}, {"at": "3s", "rtt": "80ms"}]}).to_json()
    d = run(tb, tmp_path, dyn, [{"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx"}],
            policy="dualpi2", duration=6.0)
    applied = json.loads((d / "telemetry/delay-changes.json").read_text())
    t0 = json.loads((d / "telemetry/schedule-t0").read_text())["t0_epoch"]
    assert [a["due"] - t0 for a in applied] == pytest.approx([0.0, 3.0], abs=1e-3)  # clock conversion
    assert all(0 <= a["applied"] - a["due"] < 0.02 for a in applied)
    assert [a["base_s"]["1"] for a in applied] == pytest.approx([0.02, 0.08])
    rtt = pd.read_parquet(d / "tables/rtt.parquet")
    shift = t0 - json.loads((d / "manifest.json").read_text())["started"]
    before = rtt[(rtt["t"] > shift + 1.0) & (rtt["t"] < shift + 2.9)]["rtt_ms"].median()
    after = rtt[(rtt["t"] > shift + 4.0) & (rtt["t"] < shift + 5.9)]["rtt_ms"].median()
    assert before == pytest.approx(20, abs=4) and after == pytest.approx(80, abs=6), (before, after)
    state = json.loads(Path(f"/run/testbed/{name}/state.json").read_text())
    assert "delay_schedule" not in state["extra"]
    assert [p["tag"] for p in state["processes"]] == ["delayline"]


def test_random_loss_on_the_link(netns_testbed, tmp_path):
    """10% Bernoulli loss on UDP below the link rate: the receiver's capture misses 10% of what
    the sender's sent, and the link counted exactly the packets it dropped."""
    tb = netns_testbed(dumbbell_yaml(unique_name("dyn"), senders=1))
    d = run(tb, tmp_path, dynamic.parse({"loss": "10%"}).to_json(),
            [{"name": "cbr", "kind": "udp", "src": "s1", "dst": "rx", "rate": "8mbit"}], duration=4.0)
    summary = json.loads((d / "summary.json").read_text())
    flow = pd.read_csv(d / "tables/flows.csv").set_index("name").loc["cbr"]
    assert flow["loss"] == pytest.approx(0.10, abs=0.02)
    counters = json.loads((d / "manifest.json").read_text())["datapath_counters"]
    lost = flow["packets_sent"] - flow["packets_received"]
    assert counters["link_losses"] == pytest.approx(lost, abs=3)
    assert summary["drops"]["classic"] == 0  # not the AQM's drops
