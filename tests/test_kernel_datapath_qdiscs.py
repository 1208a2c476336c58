"""The kernel datapath: policy -> qdisc arguments, detection of what is missing, and a real
run with the one 'AQM' this kernel has (pfifo)."""

from __future__ import annotations

import json
import subprocess

import pytest

import policies
from orchestrator.bottleneck.kernel import KernelDatapath, leaf_args, missing, red_burst
from orchestrator.errors import UserError
from policies.telemetry import read

from conftest import dumbbell_yaml, needs_root, unique_name


def test_pie_gains_in_tc_units() -> None:
    args = leaf_args(policies.make("pie", {"alpha": "0.25", "limit": "500"}), 100, 50e6)
    assert args[:3] == ["pie", "limit", "500"]
    assert args[args.index("alpha") + 1] == "4" and args[args.index("beta") + 1] == "20"
    assert args[args.index("target") + 1] == "15000us" and args[-1] == "ecn"


def test_dualpi2_arguments() -> None:
    args = leaf_args(policies.make("dualpi2", {"typical_rtt_ms": "20"}), 100, 50e6)
    assert args[0] == "dualpi2" and args[args.index("limit") + 1] == "10000"
    assert args[args.index("target") + 1] == "20000us"  # derived as tc-dualpi2 derives it
    assert args[args.index("classic_protection") + 1] == "10" and args[-2] == "drop_on_overload"
    assert args[-1] == "drop_dequeue"


def test_dualpi2_gains_reach_the_kernel_as_the_policy_runs_them() -> None:
    """No alpha/beta for the defaults (the kernel's 41/819 run; tc would turn '0.16' into 40);
    any other gain as a string tc's parse_alpha_beta() turns into the policy's integer:
    (uint32)(strtof(s) * 256), emulated with a C float."""
    import struct

    def tc_units(text: str) -> int:
        f = struct.unpack("<f", struct.pack("<f", float(text)))[0]
        return int(struct.unpack("<f", struct.pack("<f", f * 256))[0])

    assert "alpha" not in leaf_args(policies.make("dualpi2", {}), 100, 50e6)
    for args in ({"alpha": "0.2", "beta": "5"}, {"max_rtt_ms": "200"}, {"typical_rtt_ms": "7"},
                 {"beta": "2.0078124"}):
        pol = policies.make("dualpi2", args)
        tc = leaf_args(pol, 100, 50e6)
        for key, kernel_default in (("alpha", 41), ("beta", 819)):
            want = getattr(pol.params, key + "256")
            if want == kernel_default:
                assert key not in tc
            else:
                assert tc_units(tc[tc.index(key) + 1]) == want
    tc = leaf_args(policies.make("dualpi2", {"step_thresh_pkts": 4, "min_qlen_step": 2}), 100, 50e6)
    assert tc[tc.index("step_thresh") + 1] == "4p" and tc[tc.index("min_qlen_step") + 1] == "2"
    with pytest.raises(UserError, match="arithmetic"):
        leaf_args(policies.make("dualpi2", {"arithmetic": "float"}), 100, 50e6)


def test_fifo_takes_the_testbed_buffer() -> None:
    assert leaf_args(policies.make("fifo", {}), 123, 50e6) == ["pfifo", "limit", "123"]


def test_parameters_tc_cannot_express_are_refused() -> None:
    with pytest.raises(UserError, match="max_burst_ms"):
        leaf_args(policies.make("pie", {"max_burst_ms": "100"}), 100, 50e6)
    with pytest.raises(UserError, match="gentle"):
        leaf_args(policies.make("red", {}), 100, 50e6)
    red = leaf_args(policies.make("red", {"gentle": "false"}), 100, 50e6)
    assert red[red.index("min") + 1] == "5000" and red[red.index("max") + 1] == "15000"


def test_red_burst_matches_the_ewma_weight() -> None:
    # tc_red_eval_ewma gives W = 2^-Wlog; w_q = 0.002 is closest to 2^-9
    burst = red_burst(0.002, 5000, 1000)
    a = burst + 1 - 5
    wlog = next(n for n in range(1, 32) if a <= (1 - (1 - 2.0 ** -n) ** burst) / 2.0 ** -n)
    assert wlog == 9


@needs_root
@pytest.mark.integration
def test_missing_qdiscs_are_named() -> None:
    assert missing("pfifo") is None
    why = missing("dualpi2")
    if why is None:
        # The test is about kernels without sch_dualpi2 (this machine's); on one that has it
        # there is nothing missing to name, and the kernel datapath simply runs dualpi2.
        pytest.skip("this kernel has dualpi2: nothing missing to report")
    assert "'dualpi2' qdisc" in why and "kernel" in why and "ebpf or nfqueue" in why


@needs_root
@pytest.mark.integration
@pytest.mark.slow
def test_fifo_on_the_kernel_datapath(netns_testbed, tmp_path) -> None:
    tb = netns_testbed(dumbbell_yaml(unique_name("kd"), buffer="300"))
    dp = KernelDatapath(tb)
    if missing("pie"):  # this machine: the run must be refused before anything starts
        with pytest.raises(UserError, match="pie"):
            dp.check(policies.make("pie", {}))
    dp.start(policies.make("fifo", {"limit": "77"}), tmp_path)
    assert "pfifo 10: parent 1:1 limit 77p" in tb.run("r1", ["tc", "qdisc", "show", "dev", "e-rx"]).stdout
    server = tb.popen("rx", ["iperf3", "-s", "-1", "-p", "5201"], tag="iperf3-server")
    tb.wait_port("rx", 5201)
    subprocess.run(tb.argv_on("s1", ["iperf3", "-c", tb.host("rx").address, "-p", "5201", "-t", "2",
                                     "-C", "cubic"]), capture_output=True, timeout=30, check=True)
    tb.stop(server)
    counters = dp.stop()
    assert counters["sent_pkts"] > 1000 and counters["per_packet"] is False
    assert "limit 77p" not in tb.run("r1", ["tc", "qdisc", "show", "dev", "e-rx"]).stdout
    rows = read(tmp_path / "telemetry" / "qdisc")
    assert len(rows) >= 15 and rows.backlog_pkts.max() > 10 and (rows.kind == "pfifo").all()
    meta = json.loads((tmp_path / "telemetry" / "packets" / "meta.json").read_text())
    assert meta["per_packet"] is False and "not available" in meta["sojourn"]
    KernelDatapath.clean(tb)  # idempotent


def test_red_thresholds_in_time_become_bytes_at_the_link_rate():
    """min_ms/max_ms: 2 and 6 ms at 12 Mbit/s are 3000 and 9000 bytes for tc-red."""
    tc = leaf_args(policies.make("red", {"min_ms": 2, "max_ms": 6, "gentle": False}), 100, 12e6)
    assert tc[tc.index("min") + 1] == "3000" and tc[tc.index("max") + 1] == "9000"


@pytest.mark.parametrize("name", ["pie", "red"])
def test_a_dualq_base_aqm_is_refused_by_the_kernel(name):
    args = {"dualq": True} | ({"gentle": False} if name == "red" else {})
    with pytest.raises(UserError, match="dualq"):
        leaf_args(policies.make(name, args), 100, 50e6)
