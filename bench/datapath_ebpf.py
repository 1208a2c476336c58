"""Benchmark: the ebpf datapath with DualPI2 against plain HTB, on this machine, in one run.

    .venv/bin/python bench/datapath_ebpf.py [--seconds 3] [--rates 500,1000,...] [--flows 2]

Builds a testbed of its own (netns provider: s1 -> r1 -> rx, link rate 40 Gbit/s so the shaper
is never the limit, no base delay, a 10000-packet buffer) and, first through HTB alone (the
baseline shaper), then through the ebpf datapath running DualPI2 (HTB DualQ + clsact program +
qdisc tracepoints + control agent), sends:

  - UDP at increasing offered rates: `--flows` iperf3 clients in parallel (one iperf3 is one
    thread; two use both cores), 1472-byte payloads (1514 bytes on the wire);
  - TCP: iperf3 CUBIC with 4 streams, to see the most this machine forwards.

Loss-free: at most 0.01% of the packets lost (iperf3's count at the receivers) and at least
95% of the offered rate received. A step that lost nothing but received less is marked
'sender-limited': with veths the router's forwarding runs in the senders' system calls, so
the datapath's cost shows up as a sender that cannot offer more.

'machine us/pkt' is all CPU this machine spent per packet in the step (senders, forwarding in
the router's softirq, receivers, the agent); 'net us/pkt' subtracts the machine's load
measured in the second before the step (other work on this shared machine); 'bpf ns/pkt'
is the run time of the three BPF programs per forwarded packet (kernel.bpf_stats_enabled is
switched on for the ebpf ladder, then restored). The ratio of the two datapaths in the same
run is the datapath's cost; the absolute rate is this 2-core machine's (shared with other
work: 'cpu before' shows the load without our traffic).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import SPEC, busy_rate, machine_cpu_s  # noqa: E402

import policies  # noqa: E402
from orchestrator.bottleneck.ebpf import PIN_SUBDIR, EbpfDatapath  # noqa: E402
from orchestrator.providers import netns  # noqa: E402
from orchestrator.spec import schema as specmod  # noqa: E402
from policies.telemetry import read  # noqa: E402

RATES_MBIT = [500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000]
PORT = 5401
LOSS_FREE = 1e-4
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")

def bpf_run_ns(prog_ids: list[int]) -> tuple[int, int]:
    """(total run time ns, runs) of the programs, from bpf_stats."""
    ns = runs = 0
    for pid in prog_ids:
        info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(pid)],
                                         capture_output=True, text=True).stdout or "{}")
        ns += info.get("run_time_ns", 0)
        runs += info.get("run_cnt", 0) if pid == prog_ids[0] else 0  # packets: the tc program's
    return ns, runs


def iperf(tb, argv_per_flow: list[list[str]], seconds: float) -> list[dict]:
    ports = [PORT + i for i in range(len(argv_per_flow))]
    servers = [tb.popen("rx", ["iperf3", "-s", "-1", "-p", str(p)], tag="iperf3-server") for p in ports]
    for p in ports:
        tb.wait_port("rx", p)
    dst = tb.host("rx").address
    clients = [tb.popen("s1", ["iperf3", "-c", dst, "-p", str(p), "-t", str(seconds), "-J", *argv],
                        tag="iperf3", stdout=subprocess.PIPE)
               for p, argv in zip(ports, argv_per_flow, strict=True)]
    out = [json.loads(c.communicate(timeout=seconds + 30)[0] or b"{}") for c in clients]
    for s in servers:
        tb.stop(s)
    return out


def udp_step(tb, rate_mbit: int, seconds: float, flows: int, progs: list[int]) -> dict:
    background = busy_rate()
    cpu0, t0, bpf0 = machine_cpu_s(), time.monotonic(), bpf_run_ns(progs)
    per_flow = f"{rate_mbit / flows:.0f}M"
    res = iperf(tb, [["-u", "-b", per_flow, "-l", "1472", "-w", "4M"]] * flows, seconds)
    cpu, took = machine_cpu_s() - cpu0, time.monotonic() - t0
    bpf1 = bpf_run_ns(progs)
    ends = [r["end"] for r in res]
    pkts = max(sum(e["sum"]["packets"] for e in ends), 1)
    lost = sum(e["sum_received"]["lost_packets"] for e in ends)
    runs = max(bpf1[1] - bpf0[1], 1)
    ours = max(cpu - background * took, 0.0)  # minus what the machine did without us
    return {"offered_mbit": rate_mbit, "received_mbit": sum(e["sum_received"]["bits_per_second"]
                                                            for e in ends) / 1e6,
            "packets": pkts, "loss": lost / pkts, "machine_us_per_pkt": cpu / pkts * 1e6,
            "net_us_per_pkt": ours / pkts * 1e6,
            "bpf_ns_per_pkt": (bpf1[0] - bpf0[0]) / runs if progs else float("nan"),
            "background_cpu": background, "machine_cpu": cpu / took}


def verdict(s: dict) -> str:
    if loss_free(s):
        return ""
    if s["loss"] <= LOSS_FREE:
        return "sender-limited (CPU: the senders could not offer the rate)"
    return "lossy"


def loss_free(s: dict) -> bool:
    return s["loss"] <= LOSS_FREE and s["received_mbit"] >= 0.95 * s["offered_mbit"]


def ladder(tb, label: str, rates: list[int], seconds: float, flows: int, progs: list[int]) -> list[dict]:
    print(f"\n== {label}: UDP, {flows} parallel iperf3 flows")
    print(f"{'offered':>8} {'recvd':>8} {'loss %':>8} {'machine us/pkt':>15} {'net us/pkt':>11} "
          f"{'bpf ns/pkt':>11} {'cpu before':>11} {'cpu during':>11}")
    steps, failures = [], 0
    for rate in rates:
        s = udp_step(tb, rate, seconds, flows, progs)
        steps.append(s)
        print(f"{s['offered_mbit']:8.0f} {s['received_mbit']:8.1f} {s['loss'] * 100:8.3f} "
              f"{s['machine_us_per_pkt']:15.2f} {s['net_us_per_pkt']:11.2f} {s['bpf_ns_per_pkt']:11.0f} "
              f"{s['background_cpu']:11.2f} {s['machine_cpu']:11.2f}   {verdict(s)}", flush=True)
        failures += not loss_free(s)
        if failures >= 2:
            break
    return steps


def tcp_max(tb, label: str, seconds: float) -> dict:
    cpu0 = machine_cpu_s()
    end = iperf(tb, [["-P", "4", "-C", "cubic"]], seconds)[0]["end"]
    cpu = machine_cpu_s() - cpu0
    gbit = end["sum_received"]["bits_per_second"] / 1e9
    pkts = end["sum_received"]["bytes"] / 1448
    out = {"gbit": gbit, "retransmits": end["sum_sent"].get("retransmits", 0),
           "machine_us_per_pkt": cpu / pkts * 1e6}
    print(f"== {label}: TCP CUBIC x4: {gbit:.2f} Gbit/s, {out['retransmits']} retransmits, "
          f"machine {out['machine_us_per_pkt']:.2f} us/pkt")
    return out


def best(steps: list[dict]) -> dict | None:
    ok = [s for s in steps if loss_free(s)]
    return max(ok, key=lambda s: s["received_mbit"]) if ok else None


def our_programs(tb) -> list[int]:
    pins = tb.bpffs() / PIN_SUBDIR
    ids = [json.loads(tb.run("r1", ["bpftool", "-j", "prog", "show", "pinned",
                                    str(pins / "prog_egress")]).stdout)["id"]]
    for link in ("link_enqueue", "link_dequeue"):
        ids.append(json.loads(tb.run("r1", ["bpftool", "-j", "link", "show", "pinned",
                                            str(pins / link)]).stdout)["prog_id"])
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rates", default=",".join(map(str, RATES_MBIT)), help="Mbit/s, comma-separated")
    ap.add_argument("--flows", type=int, default=2)
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    tb = netns.up(specmod.parse(SPEC.format(rate="40gbit", name=f"ebb{uuid.uuid4().hex[:4]}")))
    stats_before = STATS_SYSCTL.read_text().strip()
    try:
        htb = ladder(tb, "HTB alone (baseline shaper)", rates, args.seconds, args.flows, [])
        htb_tcp = tcp_max(tb, "HTB alone", args.seconds)
        with tempfile.TemporaryDirectory() as tmp:
            dp = EbpfDatapath(tb)
            dp.start(policies.make("dualpi2", {}), Path(tmp))
            try:
                ebpf_tcp = tcp_max(tb, "ebpf DualPI2", args.seconds)  # without bpf_stats' cost
                STATS_SYSCTL.write_text("1")
                ebpf = ladder(tb, "ebpf DualPI2", rates, args.seconds, args.flows, our_programs(tb))
            finally:
                STATS_SYSCTL.write_text(stats_before)
                counters = dp.stop()
            ctl = read(Path(tmp) / "telemetry" / "control")
        summary(htb, ebpf, htb_tcp, ebpf_tcp, counters, ctl)
    finally:
        netns.down(tb.name)


def summary(htb, ebpf, htb_tcp, ebpf_tcp, counters, ctl) -> None:
    b_htb, b_ebpf = best(htb), best(ebpf)
    print("\n== summary")
    for label, b in (("HTB alone", b_htb), ("ebpf DualPI2", b_ebpf)):
        print(f"{label:>14}: highest loss-free UDP rate "
              + (f"{b['received_mbit']:.0f} Mbit/s, {b['machine_us_per_pkt']:.2f} us/pkt (machine)"
                 if b else "none"))
    if b_htb and b_ebpf:
        print(f"ratio ebpf/HTB: rate {b_ebpf['received_mbit'] / b_htb['received_mbit']:.2f}")
    same = [(h, e) for h, e in zip(htb, ebpf, strict=False) if loss_free(h) and loss_free(e)]
    loaded = [s for s in htb + ebpf if s["background_cpu"] > 0.5]
    if loaded:
        print(f"WARNING: {len(loaded)} of {len(htb) + len(ebpf)} steps ran on a machine already "
              f"busy (> 0.5 CPU before the step): rates and CPU figures are those of a starved "
              f"machine, and 'net' figures are not meaningful")
    if same and not loaded:
        extra = np.median([e["net_us_per_pkt"] - h["net_us_per_pkt"] for h, e in same])
        ratio = np.median([e["net_us_per_pkt"] / max(h["net_us_per_pkt"], 1e-9) for h, e in same])
        bpf = np.median([e["bpf_ns_per_pkt"] for _, e in same])
        print(f"CPU per packet at the same loss-free rates (net of background): ebpf/HTB {ratio:.2f}x "
              f"({extra * 1e3:+.0f} ns/pkt; of it the BPF programs {bpf:.0f} ns/pkt)")
    print(f"TCP x4: HTB {htb_tcp['gbit']:.2f} Gbit/s, ebpf {ebpf_tcp['gbit']:.2f} Gbit/s, "
          f"ratio {ebpf_tcp['gbit'] / htb_tcp['gbit']:.2f}")
    if len(ctl):
        us = ctl.decide_us.to_numpy()
        print(f"dualpi2 update in the agent: p50 {np.percentile(us, 50):.1f} us, "
              f"p99 {np.percentile(us, 99):.1f} us, n={len(us)}, missed {counters.get('missed')}, "
              f"late wakeups {counters.get('late_wakeups')}")
    print(f"telemetry: sample rate {counters.get('sample_rate'):.4f}, records "
          f"{counters.get('records')}, lost {counters.get('records_lost')}")


if __name__ == "__main__":
    main()
