"""The reader and the flow figures on real traffic: iperf3 between two namespaces, tcpdump
with a 128-byte snaplen on both ends (Ethernet at the receiver, `-i any` cooked capture at the
sender), checked against iperf3's own byte counts and against tshark."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.analysis import flows, summarize
from orchestrator.analysis.pcap import TCP, read_pcap

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]
SND_ADDR, RCV_ADDR = "192.168.254.1", "192.168.254.2"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@pytest.fixture
def pair():
    """Two namespaces joined by a veth pair, IPv6 off and ARP entries static, so every frame
    on the wire is IPv4 (the reader's count must equal tshark's)."""
    tag = "an" + uuid.uuid4().hex[:6]
    snd, rcv = f"{tag}s", f"{tag}r"
    try:
        for ns in (snd, rcv):
            sh("ip", "netns", "add", ns)
            for key in ("all", "default"):
                sh(*in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"))
            sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
        sh("ip", "link", "add", "vs", "netns", snd, "type", "veth", "peer", "name", "vr", "netns", rcv)
        macs = {}
        for ns, dev, addr in ((snd, "vs", SND_ADDR), (rcv, "vr", RCV_ADDR)):
            sh(*in_ns(ns, "ip", "addr", "add", f"{addr}/30", "dev", dev))
            sh(*in_ns(ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"))
            sh(*in_ns(ns, "ip", "link", "set", dev, "up"))
            macs[ns] = json.loads(sh(*in_ns(ns, "ip", "-j", "link", "show", dev)))[0]["address"]
        for ns, dev, peer, addr in ((snd, "vs", rcv, RCV_ADDR), (rcv, "vr", snd, SND_ADDR)):
            sh(*in_ns(ns, "ip", "neigh", "replace", addr, "lladdr", macs[peer], "dev", dev,
                      "nud", "permanent"))
        yield snd, rcv
    finally:
        for ns in (snd, rcv):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def start_tcpdump(ns: str, iface: str, path: Path) -> subprocess.Popen:
    """tcpdump as a run should start it; returns once it says it is capturing.

    --immediate-mode matters: without it libpcap hands packets over in TPACKET_V3 blocks
    (up to a second's worth), and a SIGINT drops the block in flight; seen here as 2% of a
    2 s flow missing ("received by filter" > "captured")."""
    proc = subprocess.Popen(in_ns(ns, "tcpdump", "-i", iface, "-s", "128", "-U", "--immediate-mode", "-n",
                                  "-w", str(path)),
                            stderr=subprocess.PIPE, text=True)
    said = []
    for _ in range(3):  # `-i any` first names its link type, then says it is listening
        said.append(proc.stderr.readline())
        if "listening on" in said[-1]:
            return proc
        if not said[-1]:
            break
    stop(proc)
    raise AssertionError(f"tcpdump did not start: {said}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def iperf3(snd: str, rcv: str) -> dict:
    server = subprocess.Popen(in_ns(rcv, "iperf3", "-s", "-1"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if ":5201" in sh(*in_ns(rcv, "ss", "-Hltn")):
                break
            time.sleep(0.05)
        out = sh(*in_ns(snd, "iperf3", "-c", RCV_ADDR, "-t", "2", "-b", "50M", "-C", "cubic", "-J"))
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return json.loads(out)


def test_reader_and_goodput_on_real_traffic(pair, tmp_path: Path) -> None:
    snd, rcv = pair
    (tmp_path / "pcap").mkdir()
    rx_pcap, tx_pcap = tmp_path / "pcap" / "rx-vr.pcap", tmp_path / "pcap" / "tx-any.pcap"
    started = time.time()
    captures = []
    try:
        captures.append(start_tcpdump(rcv, "vr", rx_pcap))
        captures.append(start_tcpdump(snd, "any", tx_pcap))
        report = iperf3(snd, rcv)
        time.sleep(0.3)  # the last ACKs
    finally:
        for proc in captures:
            stop(proc)
    sport = report["start"]["connected"][0]["local_port"]
    received = report["end"]["sum_received"]["bytes"]

    rx = read_pcap(rx_pcap)
    frames = subprocess.run(["tshark", "-r", str(rx_pcap), "-T", "fields", "-e", "frame.number"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert len(rx) == len(frames) > 1000

    data, _ = flows.select(rx, TCP, sport, 5201)
    unique, _, _, _ = flows.goodput(data, TCP)
    assert unique == pytest.approx(received, rel=0.02)
    assert 0 <= unique - received <= 64  # in fact exact but for iperf3's 37-byte cookie

    # the same flow as a results directory: the summary agrees with iperf3 as well
    ended = time.time()
    (tmp_path / "flows").mkdir()
    flow = {"name": "f1", "kind": "tcp", "src": "tx", "dst": "rx", "cc": "cubic", "ecn": None}
    (tmp_path / "manifest.json").write_text(json.dumps({
        "run_id": "real", "status": "complete", "flows": [flow], "started": started, "ended": ended,
        "spec": {"links": [{"bottleneck": {"rate": "50mbit"}}]}}))
    (tmp_path / "flows" / "f1.json").write_text(json.dumps({
        **flow, "ports": {"sport": sport, "dport": 5201}, "proto": "tcp",
        "retransmits": report["end"]["sum_sent"]["retransmits"]}))
    s = summarize(tmp_path)
    f1 = s["flows"][0]
    iperf3_mbps = report["end"]["sum_received"]["bits_per_second"] / 1e6
    assert f1["goodput_mbps"] == pytest.approx(iperf3_mbps, rel=0.05)
    assert f1["retransmits"] == report["end"]["sum_sent"]["retransmits"]
    assert 0 < f1["rtt_ms_p50"] < 20 and f1["rtt_source"] == "timestamps"
    assert 0.5 < s["utilization"] < 1.1
