"""Benchmark: the nfqueue datapath with DualPI2 against plain HTB, on this machine, in one run.

    .venv/bin/python bench/datapath_nfqueue.py [--seconds 4] [--rates 200,400,...] [--repeat 2]

Builds a testbed of its own (netns provider: s1 -> r1 -> rx, link rate 10 Gbit/s so the link is
never the limit, no base delay, a 10000-packet buffer) and sends one UDP flow (iperf3, 1472-byte
payload, 1514 bytes on the wire) at increasing rates, first through HTB alone (the testbed's
baseline shaper) and through the nfqueue link running DualPI2, interleaved rate by rate so that
both see the machine in the same state, each the best of --repeat attempts. Prints per rate:
received rate, loss, where packets were lost, and CPU per packet; then the highest loss-free
rate of each, their ratio, and the policy update cost.

Loss-free: at most 0.01% of the packets lost (iperf3's own count at the receiver) and at least
95% of the offered rate received. The receiver's socket buffer is raised (iperf3 -w 4M) so
that losses are the datapath's, and receiver socket drops are counted separately.

CPU per packet: 'link' is the nfqueue link process's user+system time per packet (the system
part includes the kernel work its verdicts trigger: the rest of the forwarding path and the
receiver's UDP stack run inside the verdict syscall); 'machine' is all CPU time this machine
spent per packet during the step (sender, forwarding, receiver, link), both datapaths. 'cpu
before' is the machine's load (in CPUs) in the second before the step, without our traffic:
the 2 cores are shared by sender, receiver and datapath, so when something else runs (more
than ~0.2 CPU before) every figure here is that of a starved machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
from orchestrator.bottleneck.nfqueue import NfqueueDatapath  # noqa: E402
from orchestrator.providers import netns  # noqa: E402
from orchestrator.spec import schema as specmod  # noqa: E402
from policies.telemetry import read  # noqa: E402

RATES_MBIT = [100, 200, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000]
PORT = 5301
LOSS_FREE = 1e-4  # fraction of packets
WIRE = 1514

def proc_cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rcvbuf_errors(tb) -> int:
    out = tb.run("rx", ["nstat", "-az", "UdpRcvbufErrors"]).stdout.split()
    return int(out[out.index("UdpRcvbufErrors") + 1]) if "UdpRcvbufErrors" in out else 0


def udp_step(tb, rate_mbit: int, seconds: float, link_pid: int | None) -> dict:
    server = tb.popen("rx", ["iperf3", "-s", "-1", "-p", str(PORT)], tag="iperf3-server")
    tb.wait_port("rx", PORT)
    background = busy_rate()
    rcv0, cpu0, t0 = rcvbuf_errors(tb), machine_cpu_s(), time.monotonic()
    link0 = proc_cpu_s(link_pid) if link_pid else 0.0
    out = tb.run("s1", ["iperf3", "-c", tb.host("rx").address, "-p", str(PORT), "-u", "-b",
                        f"{rate_mbit}M", "-l", "1472", "-w", "4M", "-t", str(seconds), "-J"],
                 timeout=seconds + 30).stdout
    cpu = machine_cpu_s() - cpu0
    link_cpu = proc_cpu_s(link_pid) - link0 if link_pid else math.nan
    tb.stop(server)
    end = json.loads(out)["end"]
    rx = end["sum_received"]
    pkts = max(end["sum"]["packets"], 1)
    return {"offered_mbit": rate_mbit, "sent_mbit": end["sum_sent"]["bits_per_second"] / 1e6,
            "received_mbit": rx["bits_per_second"] / 1e6, "packets": pkts,
            "lost": rx["lost_packets"], "loss": rx["lost_packets"] / pkts,
            "rcvbuf_drops": rcvbuf_errors(tb) - rcv0,
            "machine_us_per_pkt": cpu / pkts * 1e6, "link_us_per_pkt": link_cpu / pkts * 1e6,
            "background_cpu": background, "machine_cpu": cpu / (time.monotonic() - t0)}


def loss_free(step: dict) -> bool:
    return step["loss"] <= LOSS_FREE and step["received_mbit"] >= 0.95 * step["offered_mbit"]


class Nfqueue:
    """The nfqueue datapath with DualPI2, started for each step so that steps interleave."""

    def __init__(self, tb, run_dir: Path) -> None:
        self.tb, self.run_dir, self.counters = tb, run_dir, {}

    def __enter__(self) -> int:
        self.dp = NfqueueDatapath(self.tb)
        self.dp.start(policies.make("dualpi2", {}), self.run_dir)
        return self.dp.proc.pid

    def __exit__(self, *exc) -> None:
        c = self.dp.stop()
        for key in ("overflow_drops", "updates", "missed_deadlines"):
            self.counters[key] = self.counters.get(key, 0) + c.get(key, 0)
        for key, value in c.get("kernel_queue", {}).items():
            if key.endswith("dropped"):
                self.counters[key] = self.counters.get(key, 0) + value
        self.counters["sample_rate"] = c.get("sample_rate")


def attempt(tb, label: str, rate: int, seconds: float, nfq: Nfqueue) -> dict:
    if label == "htb":
        return udp_step(tb, rate, seconds, None)
    with nfq as pid:
        return udp_step(tb, rate, seconds, pid)


def ladder(tb, rates: list[int], seconds: float, repeat: int, keep_going: bool,
           nfq: Nfqueue) -> dict[str, list[dict]]:
    """Per rate, HTB then nfqueue (interleaved: both see the machine in the same state), each
    the best of `repeat` attempts; stops once each has failed at two rates."""
    print(f"{'datapath':<8} {'offered':>8} {'sent':>8} {'recvd':>8} {'loss %':>8} {'rcvbuf':>7} "
          f"{'machine us/pkt':>15} {'link us/pkt':>12} {'cpu before':>11} {'cpu during':>11}")
    steps: dict[str, list[dict]] = {"htb": [], "nfqueue": []}
    failures = {"htb": 0, "nfqueue": 0}
    for rate in rates:
        for label in steps:
            if failures[label] >= 2 and not keep_going:
                continue
            tries = [attempt(tb, label, rate, seconds, nfq) for _ in range(repeat)]
            s = max(tries, key=lambda t: (loss_free(t), t["received_mbit"], -t["loss"]))
            steps[label].append(s)
            failures[label] += not loss_free(s)
            print(f"{label:<8} {s['offered_mbit']:8.0f} {s['sent_mbit']:8.1f} {s['received_mbit']:8.1f} "
                  f"{s['loss'] * 100:8.3f} {s['rcvbuf_drops']:7d} {s['machine_us_per_pkt']:15.2f} "
                  f"{s['link_us_per_pkt']:12.2f} {s['background_cpu']:11.2f} {s['machine_cpu']:11.2f}"
                  f"{'' if loss_free(s) else '   lossy'}", flush=True)
        if all(f >= 2 for f in failures.values()) and not keep_going:
            break
    return steps


def best(steps: list[dict]) -> dict | None:
    ok = [s for s in steps if loss_free(s)]
    return max(ok, key=lambda s: s["received_mbit"]) if ok else None


def update_cost(telemetry: Path) -> None:
    """The live figures from the control log, then Link.state() + ControlLoop.step() + apply
    timed in this process with the link's own objects."""
    ctl = read(telemetry / "control")
    if len(ctl):
        us = ctl.decide_us.to_numpy()
        print(f"dualpi2 update in the link (ControlLoop.step, live): p50 {np.percentile(us, 50):.1f} us, "
              f"p99 {np.percentile(us, 99):.1f} us, max {us.max():.1f} us, n={len(us)}, "
              f"missed {int(ctl.missed.sum())}")
    from orchestrator.bottleneck import nfqueue_link as nl
    from orchestrator.bottleneck.control import ControlLoop

    pol = policies.make("dualpi2", {})
    link = nl.Link(50e6, pol.queue_config(), 10000, math.inf, policy=pol)
    loop = ControlLoop(pol, 0.016, None)
    samples = []
    for i in range(20000):
        t0 = time.perf_counter_ns()
        link.apply(loop.step(link.state(i * 0.016), i * 0.016))
        samples.append(time.perf_counter_ns() - t0)
    us = np.array(samples) / 1e3
    print(f"dualpi2 state + step + apply, in process: p50 {np.percentile(us, 50):.1f} us, "
          f"p99 {np.percentile(us, 99):.1f} us (no log writes)")


def python_cost_per_packet(n: int = 200_000) -> float:
    """Link.arrive + serve + packet log per packet, with stand-in packets (no NFQUEUE)."""
    from scapy.layers.inet import IP, UDP

    from orchestrator.bottleneck import nfqueue_link as nl
    from orchestrator.bottleneck.packetlog import PacketLog

    class Pkt:
        __slots__ = ("data",)

        def __init__(self, data: bytes) -> None:
            self.data = data

        def get_payload(self) -> bytes:
            return self.data

        def set_payload(self, data: bytes) -> None:
            self.data = data

        def accept(self) -> None:
            pass

        def drop(self) -> None:
            pass

    pol = policies.make("dualpi2", {})
    with tempfile.TemporaryDirectory() as tmp:
        log = PacketLog(tmp)
        link = nl.Link(1e12, pol.queue_config(), 10000, math.inf, policy=pol, log=log)
        data = [bytes(IP(tos=tos, dst="10.0.2.2") / UDP() / (b"x" * 1472)) for tos in (1, 0)]
        pkts = [Pkt(data[i & 1]) for i in range(n)]
        mono = time.monotonic
        t0 = time.process_time()
        for i, p in enumerate(pkts):
            link.arrive(p, mono())
            if i & 7 == 7:
                link.serve(mono())
        took = time.process_time() - t0
        log.close()
    return took / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rates", default=",".join(map(str, RATES_MBIT)), help="Mbit/s, comma-separated")
    ap.add_argument("--repeat", type=int, default=2, help="attempts per rate and datapath (best kept)")
    ap.add_argument("--keep-going", action="store_true", help="do not stop after two lossy rates")
    a = ap.parse_args()
    rates = [int(r) for r in a.rates.split(",")]
    name = f"nqb{uuid.uuid4().hex[:4]}"
    tb = netns.up(specmod.parse(SPEC.format(rate="10gbit", name=name), "bench"))
    print(f"background load before the run: {busy_rate(2.0):.2f} CPU (of {os.cpu_count()})")
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            nfq = Nfqueue(tb, Path(run_dir))
            steps = ladder(tb, rates, a.seconds, a.repeat, a.keep_going, nfq)
            print(f"nfqueue link counters over all steps: {nfq.counters}")
            summary(steps)
            print(f"python work per packet (arrive + serve + log, no NFQUEUE, CPU time): "
                  f"{python_cost_per_packet():.2f} us")
            update_cost(Path(run_dir) / "telemetry")
    finally:
        netns.down(name)


def summary(steps: dict[str, list[dict]]) -> None:
    print("\n== summary")
    b_htb, b_nfq = best(steps["htb"]), best(steps["nfqueue"])
    for label, b in (("HTB", b_htb), ("nfqueue+dualpi2", b_nfq)):
        if b is None:
            print(f"{label:<16} no loss-free rate in the ladder")
        else:
            print(f"{label:<16} highest loss-free rate {b['received_mbit']:7.1f} Mbit/s "
                  f"({b['received_mbit'] * 1e6 / 8 / WIRE / 1e3:.1f} kpps), machine CPU "
                  f"{b['machine_us_per_pkt']:.2f} us/pkt, link process {b['link_us_per_pkt']:.2f} us/pkt")
    if b_htb and b_nfq:
        top = (" (HTB was loss-free at the top of the ladder: its figure is a lower bound, the ratio an "
               "upper bound)") if b_htb is steps["htb"][-1] else ""
        print(f"ratio nfqueue / HTB: {b_nfq['received_mbit'] / b_htb['received_mbit']:.2f}{top}")
    if b_nfq and b_nfq["link_us_per_pkt"] > 0:
        cap = 1e6 / b_nfq["link_us_per_pkt"]
        print(f"link process alone, if it had a core to itself: {cap / 1e3:.0f} kpps = "
              f"{cap * WIRE * 8 / 1e9:.2f} Gbit/s of 1514-byte packets (an extrapolation)")


if __name__ == "__main__":
    main()
