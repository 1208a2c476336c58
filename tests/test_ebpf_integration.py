"""The ebpf datapath with real traffic through a real testbed (netns provider).

Issue 4's acceptance on ebpf, until the project's L4S sender lands: an ECT(1) UDP flow
(iperf3 -u with IP_TOS = 1, 15 Mbit/s) and a CUBIC flow through the 50 Mbit/s, 20 ms dumbbell.

Tolerance, and why it differs from nfqueue's: here sojourn is real kernel time (clsact to
qdisc dequeue), not a link's virtual time, so on this 2-core machine shared with other work it
includes the HTB watchdog's wake-up latency whenever the CPU is busy. The L queue is held at
its p99 bound of 2 ms with a 1 ms slack (3 ms), the C median must lie in the issue's 5-25 ms
and utilisation and per-flow shares meet the issue's bounds unchanged (HTB counts L2 bytes as
the link does). The measurements skip a 3 s warm-up (slow start, DualPI2's first PI steps).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

import policies
from orchestrator.bottleneck.ebpf import PIN_SUBDIR, EbpfDatapath
from orchestrator.bottleneck.ebpf_agent import Maps
from policies.telemetry import read

from conftest import dumbbell_yaml, needs_root, unique_name
from wire import capture, ce_on_wire

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_root]

RATE = 50e6
WARMUP_S = 3.0
UDP_PORT, TCP_PORT = 5202, 5201
L_P99_MS = 3.0  # the 2 ms plus 1 ms of scheduling slack (module docstring)


def traffic(tb, seconds: float, udp_rate: str = "15M", tcp: bool = True) -> dict:
    """CUBIC from s2 and ECT(1) UDP from s1 to rx, at once; iperf3's JSON per flow."""
    dst = tb.host("rx").address
    ports = [UDP_PORT] + ([TCP_PORT] if tcp else [])
    servers = [tb.popen("rx", ["iperf3", "-s", "-1", "-p", str(p)], tag="iperf3-server") for p in ports]
    for p in ports:
        tb.wait_port("rx", p)
    clients = {"udp": tb.popen("s1", ["iperf3", "-c", dst, "-p", str(UDP_PORT), "-t", str(seconds),
                                      "-u", "-b", udp_rate, "-l", "1400", "-S", "1", "-J"],
                               tag="iperf3", stdout=subprocess.PIPE)}
    if tcp:
        clients["tcp"] = tb.popen("s2", ["iperf3", "-c", dst, "-p", str(TCP_PORT), "-t", str(seconds),
                                         "-C", "cubic", "-J"], tag="iperf3", stdout=subprocess.PIPE)
    out = {k: json.loads(p.communicate(timeout=seconds + 30)[0] or b"{}") for k, p in clients.items()}
    for s in servers:
        tb.stop(s)
    return out


def steady(df):
    return df[df.t_arrival > df.t_arrival.min() + WARMUP_S]


def utilisation(df) -> float:
    sent = df[df.t_departure.notna()]
    span = sent.t_departure.max() - sent.t_departure.min()
    return sent["size"].sum() * 8 / span / RATE


def our_programs(tb) -> set[int]:
    """Ids of the programs the datapath attached (tc filter and the two pinned links)."""
    pins = tb.bpffs() / PIN_SUBDIR
    ids = {json.loads(tb.run("r1", ["bpftool", "-j", "prog", "show", "pinned",
                                    str(pins / "prog_egress")]).stdout)["id"]}
    for link in ("link_enqueue", "link_dequeue"):
        ids.add(json.loads(tb.run("r1", ["bpftool", "-j", "link", "show", "pinned",
                                         str(pins / link)]).stdout)["prog_id"])
    return ids


def prog_exists(prog_id: int) -> bool:
    return subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)],
                          capture_output=True).returncode == 0


def assert_baseline(tb) -> None:
    """Only the baseline shaper is left on the bottleneck: no clsact, filter or DualQ class."""
    qdiscs = tb.run("r1", ["tc", "qdisc", "show", "dev", "e-rx"]).stdout
    assert "clsact" not in qdiscs and "htb 1:" in qdiscs and "pfifo 10:" in qdiscs, qdiscs
    assert tb.run("r1", ["tc", "filter", "show", "dev", "e-rx", "egress"]).stdout.strip() == ""
    assert "1:11" not in tb.run("r1", ["tc", "class", "show", "dev", "e-rx"]).stdout
    assert not (tb.bpffs() / PIN_SUBDIR).exists()


@pytest.fixture
def dumbbell(netns_testbed):
    return netns_testbed(dumbbell_yaml(unique_name("eb"), rate="50mbit", rtt="20ms"))


def test_dualpi2_separates_l_and_c(dumbbell, tmp_path):
    tb = dumbbell
    dp = EbpfDatapath(tb)
    dp.start(policies.make("dualpi2", {}), tmp_path)
    assert "bpf" in tb.run("r1", ["tc", "filter", "show", "dev", "e-rx", "egress"]).stdout
    pcap = tmp_path / "rx.pcap"
    dump = capture(tb, pcap)
    flows = traffic(tb, 12)
    time.sleep(0.3)
    tb.stop(dump)
    counters = dp.stop()
    assert counters["agent_died"] is False and counters["records_lost"] == 0, counters
    assert_baseline(tb)

    df = read(tmp_path / "telemetry" / "packets")
    meta = json.loads((tmp_path / "telemetry" / "packets" / "meta.json").read_text())
    assert meta["sample_rate"] == 1.0 and meta["datapath"] == "ebpf"
    # classification: ECT(1) and CE in L, the rest in C; the UDP flow is all L, TCP all C
    assert ((df.ecn_in & 1) == (df.cls == 0)).all()
    udp_data = df[(df.proto == 17) & (df["size"] > 100)]  # iperf3's 4-byte hello is Not-ECT
    assert len(udp_data) > 1000 and (udp_data.cls == 0).all() and (df[df.proto == 6].cls == 1).all()
    assert (udp_data.dport == UDP_PORT).all() and (udp_data["size"] == 1400 + 42).all()
    # marking: L packets got CE-marked in the kernel, and reach the receiver with valid checksums
    l_marks = int(((df.cls == 0) & (df.action == 2)).sum())
    total, ce, bad = ce_on_wire(pcap)
    assert l_marks > 50 and bad == 0
    assert abs(ce - l_marks) <= 0.02 * l_marks + 5, (ce, l_marks, total)
    assert counters["l4s_marks"] >= l_marks  # the log is a sample of what the kernel counted

    s = steady(df)
    l_soj, c_soj = s[s.cls == 0].sojourn_ms.dropna(), s[s.cls == 1].sojourn_ms.dropna()
    util = utilisation(s)
    sent = s[s.t_departure.notna()]
    share = sent.groupby("proto")["size"].sum() / sent["size"].sum()
    summary = (f"L p99 {l_soj.quantile(0.99):.2f} ms, C p50 {c_soj.median():.1f} ms, "
               f"util {util:.3f}, shares {share.to_dict()}")
    print(summary)
    assert l_soj.quantile(0.99) <= L_P99_MS, summary
    assert 5.0 <= c_soj.median() <= 25.0, summary
    assert util >= 0.90, summary
    assert share[17] >= 0.20 and share[6] >= 0.20, summary
    assert flows["tcp"]["end"]["sum_received"]["bits_per_second"] > 0.2 * RATE

    # one control row per tupdate; the state the policy saw matches the packet log
    ctl = read(tmp_path / "telemetry" / "control")
    assert len(ctl) >= 12 / 0.016 * 0.8 and ctl.l4s_p_mark.max() > 0
    # the loop keeps its deadline (tupdate): a DualPI2 update takes microseconds, so a miss can
    # only be the scheduler preempting it on a loaded machine. Not "zero misses" (luck), but
    # every miss is an update measured slower than the deadline, and they are rare
    assert counters["updates"] == len(ctl)
    assert counters["missed"] == int(ctl.missed.sum()) == int((ctl.decide_us > 16_000).sum())
    assert ctl.decide_us.median() < 1_000 and counters["missed"] <= 0.02 * len(ctl), counters
    busy = ctl[ctl.t > ctl.t.min() + WARMUP_S]
    assert busy.classic_departure_bps.median() > 0.2 * RATE
    assert abs(busy.classic_sojourn_ms.median() - c_soj.median()) < 5.0


L4S_SCENARIO = """scenario:
  duration: 12s
  flows:
    - {name: l4s, kind: l4s, src: s1, dst: rx}
    - {name: cubic, kind: tcp, src: s2, dst: rx, cc: cubic}
"""


def test_l4s_and_cubic_meet_the_bounds(netns_testbed, tmp_path):
    """The acceptance scenario with the project's L4S sender (scalable CC, ECT(1)) and CUBIC."""
    from orchestrator import workloads

    tb = netns_testbed(dumbbell_yaml(unique_name("eb"), scenario=L4S_SCENARIO))
    dp = EbpfDatapath(tb)
    dp.start(policies.make("dualpi2", {}), tmp_path)
    try:
        reports = {r["name"]: r for r in workloads.run_flows(tb, tb.spec().scenario, tmp_path, 12.0)}
    finally:
        counters = dp.stop()
    s = steady(read(tmp_path / "telemetry" / "packets"))
    l_soj, c_soj = s[s.cls == 0].sojourn_ms.dropna(), s[s.cls == 1].sojourn_ms.dropna()
    sent = s[s.t_departure.notna()]
    share = sent.groupby("cls")["size"].sum() / sent["size"].sum()
    summary = (f"L p99 {l_soj.quantile(0.99):.2f} ms, C p50 {c_soj.median():.1f} ms, "
               f"util {utilisation(s):.3f}, shares L {share[0]:.2f} C {share[1]:.2f}, "
               f"L marks {counters['l4s_marks']}")
    print(summary)
    assert l_soj.quantile(0.99) <= L_P99_MS, summary
    assert 5.0 <= c_soj.median() <= 25.0, summary
    assert utilisation(s) >= 0.90, summary
    assert share[0] >= 0.20 and share[1] >= 0.20, summary
    assert counters["l4s_marks"] > 100 and reports["l4s"]["bytes_sent"] > 0


def test_killed_agent_fails_static(dumbbell, tmp_path):
    """kill -9 the control loop: the kernel keeps forwarding and marking with the last
    decision, nothing updates it any more, and stop() says so."""
    tb = dumbbell
    dp = EbpfDatapath(tb)
    dp.start(policies.make("dualpi2", {}), tmp_path)
    flows: dict = {}
    thread = threading.Thread(target=lambda: flows.update(traffic(tb, 14)))
    thread.start()
    time.sleep(2)
    maps = Maps(tb.bpffs() / PIN_SUBDIR)
    deadline = time.monotonic() + 8
    # until CUBIC's queue has pushed L marking above 2% (p' decays whenever the queue drains),
    # so that 3 s of frozen decision at ~1300 L packets/s must show marks
    while maps.config["cls"]["p_mark"][0, 0] < 0.02 * 2**32 and time.monotonic() < deadline:
        time.sleep(0.01)
    maps.close()
    os.killpg(dp.agent.pid, signal.SIGKILL)
    dp.agent.wait()
    maps = Maps(tb.bpffs() / PIN_SUBDIR)
    frozen, before = maps.config.copy(), maps.snapshot()
    time.sleep(3)
    config, after = maps.config.copy(), maps.snapshot()
    maps.close()
    thread.join()
    assert frozen.tobytes() == config.tobytes()  # nobody wrote a decision since
    assert frozen["cls"]["p_mark"][0, 0] > 0  # and the last one had L marking in it
    sent = int(after[1]["q_sent_bytes"].sum() - before[1]["q_sent_bytes"].sum())
    assert sent > 0.8 * RATE / 8 * 3  # still forwarding at the link rate
    assert after[0]["marks"][0] - before[0]["marks"][0] > 20  # still marking L
    assert flows["tcp"]["end"]["sum_received"]["bits_per_second"] > 0.2 * RATE
    counters = dp.stop()
    assert counters["agent_died"] is True and counters["agent_exit_code"] == -signal.SIGKILL
    assert_baseline(tb)


def test_clean_after_kill_removes_everything(dumbbell, tmp_path):
    """`testbed down` after the orchestrator and the agent were killed: clean() finds and
    removes the filter, clsact, DualQ classes, pins and programs; it is idempotent."""
    tb = dumbbell
    dp = EbpfDatapath(tb)
    dp.start(policies.make("dualpi2", {}), tmp_path)
    ids = our_programs(tb)
    assert len(ids) == 3 and all(prog_exists(i) for i in ids)
    os.killpg(dp.agent.pid, signal.SIGKILL)
    dp.agent.wait()
    EbpfDatapath.clean(tb)
    assert_baseline(tb)
    deadline = time.monotonic() + 5  # programs are freed after an RCU grace period
    while any(prog_exists(i) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(prog_exists(i) for i in ids)
    EbpfDatapath.clean(tb)
    assert_baseline(tb)
    ping = tb.run("s1", ["ping", "-c", "2", "-i", "0.2", "-W", "2", tb.host("rx").address], check=False)
    assert ping.returncode == 0, ping.stdout


def test_sampling_is_recorded(dumbbell, tmp_path):
    tb = dumbbell
    dp = EbpfDatapath(tb, sample_rate=0.25)
    dp.start(policies.make("fifo", {}), tmp_path)
    traffic(tb, 3, tcp=False)
    counters = dp.stop()
    df = read(tmp_path / "telemetry" / "packets")
    meta = json.loads((tmp_path / "telemetry" / "packets" / "meta.json").read_text())
    assert meta["sample_rate"] == 0.25 and counters["sample_rate"] == 0.25
    arrivals = counters["l4s_arrivals"] + counters["classic_arrivals"]
    assert np.isclose(len(df), 0.25 * arrivals, rtol=0.15), (len(df), arrivals)
    assert (df.action == 0).all()  # fifo, far below the buffer: neither drops nor marks
