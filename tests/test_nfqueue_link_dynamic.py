"""The nfqueue link under a schedule, a Mahimahi trace and random loss, in its virtual clock
(no NFQUEUE: packets stand in for netfilterqueue's)."""

from __future__ import annotations

import json
import math

import pytest

from orchestrator.bottleneck import nfqueue_link as nl
from orchestrator.bottleneck import service as svc_mod
from orchestrator.spec import loss as lossmod
from orchestrator.spec import schedule as sm
from policies.base import QueueConfig
from tests.test_nfqueue_link import Pkt, udp


def saturate(link: nl.Link, n: int, size: int = 1500, every: float = 0.0) -> list[tuple[float, Pkt]]:
    """Queue n packets (arrivals `every` s apart) and serve until idle; (release time, pkt)."""
    pkts = [Pkt(udp(size=size)) for _ in range(n)]
    for i, p in enumerate(pkts):
        link.arrive(p, i * every)
    out, seen = [], 0
    wake = link.serve(0.0)
    for _ in range(10 * n + 10):  # bounded: a link that stops its clock fails, never hangs
        if wake is None:
            break
        now = wake
        wake = link.serve(now)
        done = [p for p in pkts if p.verdict is not None]
        out += [(now, p) for p in done[seen:]]
        seen = len(done)
    return out


def test_rate_schedule_changes_the_service_rate_at_its_time():
    # 1514-byte frames: 12112 bit; 12.112 Mbit/s = 1 ms each, then 1.2112 Mbit/s = 10 ms each
    sched = sm.Schedule([sm.Step(0, 12.112e6), sm.Step(0.0105, 1.2112e6)])
    link = nl.Link(50e6, QueueConfig(dualq=False), 1000, math.inf, service=svc_mod.RateService(sched, 0.0))
    times = [t for t, _ in saturate(link, 14)]
    # 10 packets at 1 ms; the 11th starts at 10 ms: 0.5 ms at the old rate (half the packet)
    # then the other half at the new rate takes 5 ms -> 15.5 ms; then 10 ms each
    expect = [1e-3 * k for k in range(1, 11)] + [0.0155, 0.0255, 0.0355, 0.0455]
    assert times == pytest.approx(expect, abs=1e-9)
    state = link.state(0.05)
    assert state.link_rate_bps == 50e6  # the policy sees the nominal rate, not the schedule
    assert link.capacity == [(0.05, pytest.approx(1.2112e6))]


def test_trace_releases_at_opportunities(tmp_path):
    trace = sm.MahimahiTrace([2, 2, 5, 10])  # 4 per 10 ms
    link = nl.Link(50e6, QueueConfig(dualq=False), 1000, math.inf, service=svc_mod.TraceService(trace, 0.0))
    times = [t for t, _ in saturate(link, 9)]
    assert times == pytest.approx([0.002, 0.002, 0.005, 0.010, 0.012, 0.012, 0.015, 0.020, 0.022])


def test_trace_sojourn_includes_the_wait_for_the_opportunity():
    trace = sm.MahimahiTrace([10])
    link = nl.Link(50e6, QueueConfig(dualq=False), 1000, math.inf, service=svc_mod.TraceService(trace, 0.0))
    saturate(link, 1)
    st = link.state(0.02)
    assert st.classic.sojourn_ms == pytest.approx(10.0)


def test_loss_drops_after_the_link_and_counts_apart():
    model = lossmod.LossModel.bernoulli(0.25)
    link = nl.Link(12.112e6, QueueConfig(dualq=False), 10000, math.inf, loss=lossmod.Loss(model, seed=1))
    pkts = [Pkt(udp(size=1500)) for _ in range(4000)]
    for p in pkts:
        link.arrive(p, 0.0)
    now = 0.0
    for _ in range(5000):
        if (wake := link.serve(now)) is None:
            break
        now = wake
    lost = sum(p.verdict == "drop" for p in pkts)
    assert lost == link.link_losses
    assert lost / 4000 == pytest.approx(0.25, abs=0.03)
    assert now == pytest.approx(4.0)  # lost packets used the link
    c = link.counters()
    assert c["drops"]["classic"] == 0 and c["link_losses"] == lost


def test_make_service_from_config_and_capacity_file(tmp_path):
    cfg = {"schedule": {"kind": "steps", "steps": [[0, 50e6, 0], [10, 10e6, 0], [20, 50e6, 2]],
                        "t0_epoch": 1000.0}, "telemetry_dir": str(tmp_path)}
    svc = svc_mod.make_service(cfg, epoch_offset=990.0)  # epoch 1000 = monotonic 10
    assert isinstance(svc, svc_mod.RateService)
    assert svc.rate_at(10 + 15) == 10e6 and svc.rate_at(10 + 21) == pytest.approx(30e6)
    cfg2 = {"schedule": {"kind": "mahimahi", "ms": [1, 2], "t0_epoch": 5.0}}
    assert isinstance(svc_mod.make_service(cfg2, 0.0), svc_mod.TraceService)
    assert svc_mod.make_service({}, 0.0) is None and svc_mod.make_loss({}) is None
    lm = svc_mod.make_loss({"loss": {"p": 0.0, "r": 1.0, "loss_good": 0.5, "loss_bad": 0.5}, "seed": 3})
    assert lm.model.mean_loss == 0.5
    link = nl.Link(50e6, QueueConfig(), 100, math.inf, service=svc, epoch_offset=990.0)
    link.state(25.0)
    svc_mod.write_capacity(cfg, link, 1000.0, 1030.0)
    got = json.loads((tmp_path / "capacity.json").read_text())
    assert got["kind"] == "steps" and got["samples"] == [[1015.0, 10e6]]
    # the ramp goes in 0.1 s steps
    assert got["steps"][:3] == [[1000.0, 50e6], [1010.0, 10e6], [1020.0, pytest.approx(11e6)]]
    assert got["changes"] == [[10.0, 50e6, 10e6], [20.0, 10e6, 50e6]]
    assert svc_mod.make_service(cfg, 0.0, t0_epoch=7.0).t0 == 7.0  # the run's t0 wins


def test_sampling_follows_the_highest_rate():
    assert nl.sample_rate({"rate_bps": 10e6, "max_rate_bps": 1e9}) < nl.sample_rate({"rate_bps": 10e6})


def test_trace_capacity_record_says_the_mean_held_before_t0(tmp_path):
    """Before the flows start the link runs at the trace's mean; the record and the analysis
    of it agree (the plot's capacity line before t0, the intervals from t0 on)."""
    import numpy as np

    from orchestrator.analysis import dynamics

    (tmp_path / "telemetry").mkdir()
    # 4 packets per 200 ms (0.24 Mbit/s on average), 3 of them in the first 100 ms (0.36)
    cfg = {"schedule": {"kind": "mahimahi", "ms": [1, 1, 1, 200], "t0_epoch": 100.0},
           "telemetry_dir": str(tmp_path / "telemetry")}
    link = nl.Link(50e6, QueueConfig(), 100, math.inf, service=svc_mod.make_service(cfg, 0.0))
    svc_mod.write_capacity(cfg, link, 100.0, 100.3)
    cap = dynamics.read_capacity(tmp_path)
    assert cap["steps"][0] == [100.0 - svc_mod.PRE_T0_S, pytest.approx(0.24e6)]
    # the run started 2 s before t0: the mean until t0, then the trace's own bins
    assert dynamics.capacity_series(cap, 98.0, np.array([0.5, 2.05, 2.15])).tolist() == \
        pytest.approx([0.24, 0.36, 0.12])
    assert dynamics.capacity_schedule([(t - 100.0, r) for t, r in cap["steps"]]).value_at(0) == \
        pytest.approx(0.36e6)
