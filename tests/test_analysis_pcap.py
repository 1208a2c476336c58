"""The vectorised pcap reader against packets of known content and against tshark."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scapy.all import IP, TCP, UDP, CookedLinux, CookedLinuxV2, Dot1Q, Ether, Raw, wrpcap

from orchestrator.analysis.pcap import ACK, PSH, SYN, int_to_ip, ip_to_int, read_pcap

T0 = 1_764_000_000.0


def packets() -> list:
    """Four kinds of packet with every field set to something recognisable."""
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]
    syn_opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (777, 0)), ("NOP", None), ("WScale", 7)]
    out = [
        IP(src="10.0.0.1", dst="10.0.2.2", tos=0x01) / TCP(sport=40000, dport=5201, seq=4294967000, ack=77,
                                                          flags="PA", options=opts) / Raw(b"x" * 1000),
        IP(src="10.0.2.2", dst="10.0.0.1", tos=0x03) / TCP(sport=5201, dport=40000, seq=77,
                                                          ack=4294967296 - 10, flags="A", options=opts),
        IP(src="10.0.1.1", dst="10.0.2.2", tos=0x02) / UDP(sport=50000, dport=6000) / Raw(b"y" * 500),
        IP(src="10.0.0.1", dst="10.0.2.2") / TCP(sport=1, dport=2, flags="S", options=syn_opts),
        IP(src="10.0.0.1", dst="10.0.2.2") / TCP(sport=3, dport=4, flags="A") / Raw(b"z" * 10),  # no options
    ]
    return out


def stamp(pkts: list, step: float = 0.001) -> list:
    for i, p in enumerate(pkts):
        p.time = T0 + i * step + 0.000123
    return pkts


def check_fields(df) -> None:
    assert len(df) == 5
    assert list(df["sport"]) == [40000, 5201, 50000, 1, 3]
    assert list(df["ecn"]) == [1, 3, 2, 0, 0]
    assert list(df["payload_len"]) == [1000, 0, 500, 0, 10]
    assert list(df["proto"]) == [6, 6, 17, 6, 6]
    assert df["seq"][0] == 4294967000 and df["ack"][1] == 4294967286
    assert list(df["tsval"]) == [123456, 123456, -1, 777, -1]
    assert list(df["tsecr"]) == [654321, 654321, -1, 0, -1]
    assert df["flags"][0] == PSH | ACK and df["flags"][3] == SYN
    assert int_to_ip(df["src"][2]) == "10.0.1.1" and df["dst"][0] == ip_to_int("10.0.2.2")
    assert df["ip_len"][0] == 20 + 32 + 1000
    assert np.allclose(df["t"], T0 + np.arange(5) * 0.001 + 0.000123, atol=1e-6, rtol=0)


@pytest.mark.parametrize("link", ["ether", "vlan", "sll", "sll2", "raw"])
def test_fields_per_link_type(tmp_path: Path, link: str) -> None:
    wrap = {"ether": lambda p: Ether() / p, "vlan": lambda p: Ether() / Dot1Q(vlan=5) / p,
            "sll": lambda p: CookedLinux(proto=0x0800) / p, "sll2": lambda p: CookedLinuxV2(proto=0x0800) / p,
            "raw": lambda p: p}[link]
    path = tmp_path / "x.pcap"
    wrpcap(str(path), stamp([wrap(p) for p in packets()]))
    check_fields(read_pcap(path))


def test_non_ip_is_skipped_and_snaplen_cut_keeps_headers(tmp_path: Path) -> None:
    from scapy.all import ARP

    path = tmp_path / "x.pcap"
    frames = stamp([Ether() / ARP()] + [Ether() / p for p in packets()])
    wrpcap(str(path), frames, snaplen=80)  # scapy writes each record cut to 80 bytes
    df = read_pcap(path)
    assert len(df) == 5
    assert list(df["payload_len"]) == [1000, 0, 500, 0, 10]  # from the IP header, not the capture
    assert df["tsval"][0] == 123456


def test_truncated_last_record_is_dropped(tmp_path: Path) -> None:
    """tcpdump killed mid-write: the last record is cut in its data or in its header."""
    path = tmp_path / "x.pcap"
    frames = stamp([Ether() / p for p in packets()])
    wrpcap(str(path), frames)
    data = path.read_bytes()
    last_record = len(data) - 16 - len(bytes(frames[-1]))
    for keep in (len(data) - 10, last_record + 7):
        path.write_bytes(data[:keep])
        df = read_pcap(path)
        assert list(df["sport"]) == [40000, 5201, 50000, 1]


def test_empty_and_foreign_files(tmp_path: Path) -> None:
    empty = tmp_path / "e.pcap"
    wrpcap(str(empty), [])
    assert read_pcap(empty).empty
    (tmp_path / "z.pcap").write_bytes(b"")
    assert read_pcap(tmp_path / "z.pcap").empty
    (tmp_path / "bad.pcap").write_bytes(b"not a pcap file at all, just text" * 3)
    with pytest.raises(ValueError, match="not a pcap"):
        read_pcap(tmp_path / "bad.pcap")


def test_nanosecond_and_big_endian(tmp_path: Path) -> None:
    """Rewrite the scapy file as nanosecond-stamped and as big-endian; same packets out."""
    import struct

    path = tmp_path / "x.pcap"
    wrpcap(str(path), stamp([Ether() / p for p in packets()]))
    data = bytearray(path.read_bytes())
    ns, be = bytearray(data[:24]), bytearray(struct.pack(">IHHiIII", *struct.unpack("<IHHiIII", data[:24])))
    ns[:4] = struct.pack("<I", 0xA1B23C4D)
    off = 24
    while off < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, off)
        ns += struct.pack("<IIII", sec, usec * 1000, incl, orig) + data[off + 16: off + 16 + incl]
        be += struct.pack(">IIII", sec, usec, incl, orig) + data[off + 16: off + 16 + incl]
        off += 16 + incl
    for name, blob in (("ns", ns), ("be", be)):
        (tmp_path / f"{name}.pcap").write_bytes(bytes(blob))
        check_fields(read_pcap(tmp_path / f"{name}.pcap"))


def test_pcapng_goes_through_dpkt(tmp_path: Path) -> None:
    # scripts/setup.sh installs tshark, which brings editcap: its absence is a broken setup
    assert shutil.which("editcap"), "editcap missing: run scripts/setup.sh (Debian package tshark)"
    path = tmp_path / "x.pcap"
    wrpcap(str(path), stamp([Ether() / p for p in packets()]))
    subprocess.run(["editcap", "-F", "pcapng", str(path), str(tmp_path / "x.pcapng")], check=True)
    check_fields(read_pcap(tmp_path / "x.pcapng"))


def test_matches_tshark_field_by_field(tmp_path: Path) -> None:
    assert shutil.which("tshark"), "tshark missing: run scripts/setup.sh"
    rng = np.random.default_rng(1)
    frames = []
    for i in range(300):
        base = packets()[i % 5]
        base[IP].tos = int(rng.integers(0, 256))
        if TCP in base:
            base[TCP].seq = int(rng.integers(0, 2**32))
        frames.append(Ether() / base)
    path = tmp_path / "x.pcap"
    wrpcap(str(path), stamp(frames, step=0.0137))
    fields = ["frame.time_epoch", "ip.src", "ip.dst", "ip.len", "ip.dsfield.ecn", "tcp.seq_raw",
              "tcp.srcport", "udp.srcport", "tcp.options.timestamp.tsval"]
    argv = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=,"]
    for f in fields:
        argv += ["-e", f]
    lines = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()
    df = read_pcap(path)
    assert len(lines) == len(df)
    for line, row in zip(lines, df.itertuples(), strict=True):
        t, src, dst, ip_len, ecn, seq, tport, uport, tsval = line.split(",")
        assert abs(float(t) - row.t) < 1e-6
        assert (src, dst) == (int_to_ip(row.src), int_to_ip(row.dst))
        assert (int(ip_len), int(ecn)) == (row.ip_len, row.ecn)
        assert int(tport or uport) == row.sport
        if seq:
            assert int(seq) == row.seq
        assert int(tsval or -1) == row.tsval


@pytest.mark.parametrize("linktype", [101, 228, 12, 14, 0])
def test_raw_ip_link_types_and_bsd_loopback(tmp_path: Path, linktype: int) -> None:
    """LINKTYPE_RAW (101), LINKTYPE_IPV4 (228), and the DLT_RAW values 12 and 14 carry the IP
    header first; BSD loopback (0) a 4-byte address family before it (pcap-linktype(7))."""
    from scapy.all import Loopback

    pkts = stamp([Loopback(type=2) / p if linktype == 0 else p for p in packets()])
    path = tmp_path / "x.pcap"
    wrpcap(str(path), pkts, linktype=linktype)
    check_fields(read_pcap(path))


def test_tcp_flags_include_ece_cwr_and_accecn_ae(tmp_path: Path) -> None:
    """RFC 9293 flag bits (FIN 0x01 ... CWR 0x80) and AccECN's AE, the former NS bit (0x100,
    the low bit of the data-offset byte): read as the header carries them."""
    from orchestrator.analysis import pcap as P

    assert (P.FIN, P.SYN, P.RST, P.PSH, P.ACK, P.URG, P.ECE, P.CWR, P.AE) == (
        0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x100)
    base = IP(src="10.0.0.1", dst="10.0.2.2")
    pkts = stamp([base / TCP(flags=f) for f in ("SEC", "SAECN", "AN", "FA")])
    path = tmp_path / "f.pcap"
    wrpcap(str(path), pkts)
    assert list(read_pcap(path)["flags"]) == [0x02 | 0x40 | 0x80, 0x02 | 0x10 | 0x40 | 0x80 | 0x100,
                                             0x10 | 0x100, 0x01 | 0x10]
