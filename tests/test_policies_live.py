"""Every rule-based policy in a real datapath, through `testbed run`: two CUBIC flows through a
20 Mbit/s, 20 ms bottleneck with a deep buffer (4 BDP, 80 ms), on nfqueue.

Each AQM must hold the classic queue near its own documented target (CoDel 5 ms, PIE and PI2
15 ms), well below the FIFO's standing queue, while the receiver still gets what the link can
carry. Utilisation is read off the receiver's pcap (bytes of IP packets that arrived at rx per
second of the steady window), not from the link's own log, so a link that lies about what it
sent cannot pass. Bounds allow for a shared 2-core machine; targets are from RFC 8289 (CoDel),
RFC 8033 (PIE) and the PI2 paper's 15 ms.
"""

from __future__ import annotations

import json
from pathlib import Path

import dpkt
import pytest

from conftest import dumbbell_yaml, needs_root, run_cli, unique_name

pytestmark = [needs_root, pytest.mark.integration, pytest.mark.slow]

RATE = 20e6
SCENARIO = ("scenario:\n  duration: 8s\n  flows:\n"
            "    - {name: c1, kind: tcp, src: s1, dst: rx, cc: cubic}\n"
            "    - {name: c2, kind: tcp, src: s2, dst: rx, cc: cubic}\n")

# policy: (classic p50 low, high) in ms
TARGETS = {"codel": (2.5, 10.0), "pie": (7.0, 25.0), "pi2": (8.0, 28.0)}


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    name = unique_name("pl")
    path = tmp_path_factory.mktemp("pl") / "tb.yaml"
    path.write_text(dumbbell_yaml(name, rate="20mbit", rtt="20ms", buffer="4bdp", scenario=SCENARIO))
    run_cli("up", str(path), check=True)
    yield name
    run_cli("down", name)


@pytest.fixture(scope="module")
def runs(testbed, tmp_path_factory):
    """One run per policy, shared by the tests below."""
    out = tmp_path_factory.mktemp("results")
    done = {}
    for policy in ("fifo", *TARGETS, "red"):
        res = run_cli("run", "--testbed", testbed, "--policy", policy, "--results", str(out / policy),
                      timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        (run_dir,) = (out / policy).iterdir()
        done[policy] = run_dir
    return done


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def receiver_utilisation(run_dir: Path, skip_s: float = 2.0, tail_s: float = 0.5) -> float:
    """IP bytes per second that arrived at rx in the steady window, over the link rate."""
    (pcap,) = (run_dir / "pcap").glob("rx-*.pcap")
    stamps, sizes = [], []
    with open(pcap, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP) and len(ip.data.data):
                stamps.append(ts)
                sizes.append(ip.len)
    t0, t1 = stamps[0] + skip_s, stamps[-1] - tail_s
    inside = sum(s for t, s in zip(stamps, sizes, strict=True) if t0 <= t < t1)
    return inside * 8 / (t1 - t0) / RATE


@pytest.mark.parametrize("policy", list(TARGETS))
def test_aqm_holds_classic_delay_near_its_target(runs, policy):
    low, high = TARGETS[policy]
    p50 = _summary(runs[policy])["queue_delay_ms"]["classic"]["p50"]
    fifo = _summary(runs["fifo"])["queue_delay_ms"]["classic"]["p50"]
    assert low <= p50 <= high, (policy, p50)
    assert fifo > 3 * p50, (fifo, p50)


@pytest.mark.parametrize("policy", ["fifo", *TARGETS])
def test_receiver_gets_what_the_link_carries(runs, policy):
    util = receiver_utilisation(runs[policy])
    assert 0.93 <= util <= 1.01, (policy, util)


def test_red_drops_early_and_keeps_the_queue_short(runs):
    red, fifo = _summary(runs["red"]), _summary(runs["fifo"])
    assert red["drops"]["classic"] > 0
    assert red["queue_delay_ms"]["classic"]["p50"] < fifo["queue_delay_ms"]["classic"]["p50"] / 3
    assert receiver_utilisation(runs["red"]) >= 0.8
