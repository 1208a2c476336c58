"""The workloads' pieces that need no namespace: tcp_info parsing, the UDP receiver's counts,
iperf3 intervals as rows, crafted packet templates, flow checks on hosts, capture points,
and the BPF objects' build (needs clang, skipped without it)."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from orchestrator.errors import UserError
from orchestrator.providers import netns
from orchestrator.spec import schema as specmod
from orchestrator.spec.scenario import FlowSpec
from orchestrator.workloads import bpfbuild, iperf, plan, scapy_sender, tcpinfo, udp_cbr

from conftest import dumbbell_yaml


def fake_tcp_info(**values: int) -> bytes:
    buf = bytearray(tcpinfo.SIZE)
    for name, value in values.items():
        fmt, off = tcpinfo.FIELDS[name]
        struct.pack_into("<" + fmt, buf, off, value)
    return bytes(buf)


def test_tcp_info_fields_and_rows():
    info = tcpinfo.parse(fake_tcp_info(rtt_us=20500, cwnd=83, delivery_rate=6_000_000, total_retrans=3,
                                       delivered_ce=7, options=tcpinfo.TCPI_OPT_ECN, delivered_e1_bytes=10))
    row = tcpinfo.row(12.5, info)
    assert dict(zip(tcpinfo.COLUMNS, row, strict=True)) | {"t": 12.5} == {
        "t": 12.5, "rtt_us": 20500, "cwnd": 83, "delivery_rate_bps": 48_000_000, "total_retrans": 3,
        "bytes_acked": 0, "ca_state": 0, "delivered": 0, "delivered_ce": 7, "min_rtt_us": 0,
        "pacing_rate_bps": 0, "snd_ssthresh": 0, "unacked": 0}
    assert tcpinfo.ecn_summary(info)["ecn"] and tcpinfo.ecn_summary(info)["accecn"]
    # an older kernel returns a shorter struct: the missing fields read as 0
    old = tcpinfo.parse(fake_tcp_info(rtt_us=1000)[:232])
    assert old["rtt_us"] == 1000 and old["delivered_e1_bytes"] == 0


def test_udp_counter_counts_codepoints_losses_and_delay():
    c = udp_cbr.Counter()
    for seq, tos in ((0, 1), (1, 3), (3, 1), (4, 0)):
        c.add(udp_cbr.HEADER.pack(seq, 100.0) + bytes(100), tos, 100.004, ("10.0.1.1", 5000))
    r = c.report()
    assert r["packets_received"] == 4 and r["max_seq"] == 4  # seq 2 is lost
    assert r["ecn_counts"] == {"not-ect": 1, "ect1": 2, "ect0": 0, "ce": 1}
    assert r["owd_ms"]["p50"] == pytest.approx(4.0, abs=0.01)


def test_iperf3_intervals_become_rows():
    raw = {"intervals": [{"streams": [{"end": 0.1, "rtt": 21000, "snd_cwnd": 1448 * 40, "pmtu": 1500,
                                       "bits_per_second": 4.6e7, "retransmits": 2}]},
                         {"streams": [{"end": 0.2, "rtt": 22000, "snd_cwnd": 1448 * 41, "pmtu": 1500,
                                       "bits_per_second": 4.7e7, "retransmits": 1}]}]}
    rows = iperf.iperf_rows(raw, 100.0)
    assert [r[:5] for r in rows] == [[100.1, 21000, 40, 4.6e7, 2], [100.2, 22000, 41, 4.7e7, 3]]
    assert all(len(r) == len(tcpinfo.COLUMNS) for r in rows)


def test_scapy_template_carries_codepoint_ports_and_no_udp_checksum():
    pkt = scapy_sender.template("10.0.1.1", "10.0.3.2", 40000, 5201, 3, 100)
    assert len(pkt) == 20 + 8 + 100
    assert pkt[1] & 3 == 3 and pkt[9] == 17
    assert struct.unpack("!HHHH", pkt[20:28]) == (40000, 5201, 108, 0)


@pytest.fixture
def paper_testbed() -> netns.NetnsTestbed:
    """A testbed object planned from a spec, without building anything."""
    spec = specmod.parse(dumbbell_yaml("paper"))
    hosts, bottleneck = netns.plan(spec)
    return netns.NetnsTestbed(spec.name, spec.model_dump(mode="json"), hosts, bottleneck)


@pytest.mark.parametrize("kw,words", [
    (dict(dst="nope"), ("flow 'f' (flows[0]) dst", "unknown host 'nope'", "r1, rx, s1, s2")),
    (dict(src="r1"), ("src", "router")),
    (dict(dst="s1"), ("dst", "same host")),
])
def test_host_errors_name_the_flow_and_key(paper_testbed, kw, words):
    f = FlowSpec.model_validate({"name": "f", "kind": "udp", "src": "s1", "dst": "rx", "rate": "1mbit",
                                 "duration": "1s", **kw})
    with pytest.raises(UserError) as err:
        plan.make(paper_testbed, [f], 5.0)
    for w in words:
        assert w in str(err.value)


def test_capture_points(paper_testbed):
    from orchestrator.experiment.capture import resolve

    assert resolve(paper_testbed, None) == [("s1", "e-r1"), ("s2", "e-r1"), ("rx", "e-r1")]
    assert resolve(paper_testbed, ["r1", "rx:e-r1", ("rx", "e-r1")]) == [
        ("r1", "e-s1"), ("r1", "e-s2"), ("r1", "e-rx"), ("rx", "e-r1")]
    with pytest.raises(UserError, match="has no interface 'eth0'"):
        resolve(paper_testbed, ["rx:eth0"])
    with pytest.raises(UserError, match="no host 'zz'"):
        resolve(paper_testbed, ["zz"])


def test_bpf_objects_build_with_their_parameters():
    cc = bpfbuild.build("scalable_cc.bpf.c", {"CC_NAME": "l4s_unit", "CC_FLAGS": "0x6"})
    again = bpfbuild.build("scalable_cc.bpf.c", {"CC_NAME": "l4s_unit", "CC_FLAGS": "0x6"})
    other = bpfbuild.build("scalable_cc.bpf.c", {"CC_NAME": "l4s_unit2", "CC_FLAGS": "0x6"})
    assert cc == again and cc != other  # cached by parameters
    assert ".struct_ops" in sections(cc)
    assert b"l4s_unit\0" in cc.read_bytes()
    assert " tc " in sections(bpfbuild.build("ect1_rewrite.bpf.c"))


def sections(obj) -> str:
    tool = "llvm-objdump" if shutil.which("llvm-objdump") else "objdump"
    return subprocess.run([tool, "-h", str(obj)], capture_output=True, text=True).stdout
