"""Benchmark: the workloads' senders on real testbeds (netns provider, 20 ms base RTT).

    python bench/workloads_senders.py [--repeat 3] [--seconds 8]

1. The project's TCP sender (the L4S sender, scalable BPF congestion control) alone through a
   plain FIFO bottleneck at 50 and 200 Mbit/s: goodput and the sender's CPU (share of a core).
2. L4S vs CUBIC, each alone through a 50 Mbit/s bottleneck that CE-marks ECN-capable packets
   above 1 ms of queue (workloads/stepmark.py): throughput after a 2 s warm-up (receiver
   pcap), median and p95 RTT (the sender's samples), CE fraction.
3. Schedule: how far the first and last data packets (receiver pcap) lie from the schedule,
   for the L4S sender (released on stdin) and iperf3 (started when due).

Needs root. The machine's other load shows in every figure: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import workloads  # noqa: E402
from orchestrator.analysis.pcap import read_pcap  # noqa: E402
from orchestrator.experiment.capture import Capture  # noqa: E402
from orchestrator.providers import netns  # noqa: E402
from orchestrator.spec import schema as specmod  # noqa: E402
from orchestrator.spec.scenario import Scenario  # noqa: E402
from orchestrator.workloads import stepmark  # noqa: E402

WARMUP_S = 2.0


def testbed_yaml(name: str, rate: str) -> str:
    return (f"name: {name}\nhosts:\n  - {{name: s1, role: sender}}\n  - {{name: s2, role: sender}}\n"
            f"  - {{name: r1, role: router}}\n  - {{name: rx, role: receiver}}\nlinks:\n"
            f"  - {{a: s1, b: r1}}\n  - {{a: s2, b: r1}}\n"
            f"  - {{a: r1, b: rx, bottleneck: {{rate: {rate}, rtt: 20ms, buffer: 1.5bdp}}}}\n")


def run(tb, flow: dict, seconds: float, out: Path) -> tuple[dict, object]:
    scenario = Scenario.model_validate({"duration": f"{seconds}s", "flows": [flow]})
    with Capture(tb, out, points=["rx"]):
        rep = workloads.run_flows(tb, scenario, out)[0]
    rx = read_pcap(out / "pcap" / "rx-e-r1.pcap")
    return rep, rx[(rx.dport == rep["ports"]["dport"]) & (rx.payload_len > 0)]


def steady(rep: dict, data) -> dict[str, float]:
    t0 = rep["start"] + WARMUP_S
    late = data[data.t >= t0]
    rtts = sorted(r[1] / 1e3 for r in rep["tcp_info"] if r[0] >= t0 and r[1])
    return {"mbps": late.ip_len.sum() * 8 / (late.t.max() - late.t.min()) / 1e6,
            "rtt50": statistics.median(rtts), "rtt95": rtts[int(0.95 * (len(rtts) - 1))],
            "ce": float((late.ecn == 3).mean())}


def up(rate: str):
    return netns.up(specmod.parse(testbed_yaml("bw" + uuid.uuid4().hex[:5], rate), "bench"))


def sender_speed(repeat: int, seconds: float, tmp: Path) -> None:
    print(f"\n1. L4S sender alone, FIFO bottleneck, {seconds:g} s")
    print(f"{'link':>10} {'goodput Mbit/s':>15} {'sender CPU % of a core':>23}")
    for rate in ("50mbit", "200mbit"):
        tb = up(rate)
        try:
            for i in range(repeat):
                rep, _ = run(tb, {"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx"}, seconds,
                             tmp / f"speed-{rate}-{i}")
                active = rep["end"] - rep["start"]
                cpu = rep["raw"]["client"]["cpu_s"] / active * 100
                print(f"{rate:>10} {rep['bytes_received'] * 8 / active / 1e6:>15.1f} {cpu:>23.1f}")
        finally:
            netns.down(tb.name)


def l4s_vs_cubic(repeat: int, seconds: float, tmp: Path) -> None:
    print(f"\n2. 50 Mbit/s, 20 ms, 1 ms CE step for ECN-capable packets, {seconds:g} s, after {WARMUP_S:g} s")
    print(f"{'flow':>6} {'Mbit/s':>7} {'RTT p50 ms':>11} {'RTT p95 ms':>11} {'CE frac':>8}")
    tb = up("50mbit")
    try:
        stepmark.attach(tb, 0.001)
        flows = {"l4s": {"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx"},
                 "cubic": {"name": "cubic", "kind": "tcp", "src": "s1", "dst": "rx", "cc": "cubic"}}
        for i in range(repeat):
            for name, flow in flows.items():
                s = steady(*run(tb, flow, seconds, tmp / f"{name}-{i}"))
                print(f"{name:>6} {s['mbps']:>7.1f} {s['rtt50']:>11.2f} {s['rtt95']:>11.2f} {s['ce']:>8.3f}")
    finally:
        netns.down(tb.name)


def schedule(repeat: int, tmp: Path) -> None:
    print("\n3. schedule: first / last data packet at the receiver minus the schedule, s")
    tb = up("50mbit")
    try:
        for i in range(repeat):
            out = tmp / f"sched-{i}"
            scenario = Scenario.model_validate({"duration": "5s", "flows": [
                {"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx", "start": "0.5s", "duration": "2.5s"},
                {"name": "cubic", "kind": "tcp", "src": "s2", "dst": "rx", "cc": "cubic", "start": "1.5s",
                 "duration": "3s"}]})
            with Capture(tb, out, points=["rx"]):
                reps = workloads.run_flows(tb, scenario, out)
            rx = read_pcap(out / "pcap" / "rx-e-r1.pcap")
            for rep in reps:
                d = rx[(rx.dport == rep["ports"]["dport"]) & (rx.payload_len > 0)]
                print(f"{rep['name']:>6} ({rep['tool']:>10}) start {d.t.min() - rep['scheduled_start']:+.3f}"
                      f"  end {d.t.max() - rep['scheduled_end']:+.3f}")
    finally:
        netns.down(tb.name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sender_speed(args.repeat, args.seconds, Path(tmp))
        l4s_vs_cubic(args.repeat, args.seconds, Path(tmp))
        schedule(args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
