"""Read classic pcap files fast: walk the record offsets once, then decode headers vectorised.

A tcpdump capture of a 10 s run at 50 Mbit/s holds about a million packets; parsing each one
with scapy takes minutes. Here the whole file is one numpy buffer: a tight loop collects the
record offsets (each record is a 16-byte header plus `incl_len` bytes), and every header field
of every packet is then read with one fancy-indexing gather per byte.

Supported link types: Ethernet (1, with one VLAN tag), Linux cooked SLL (113) and SLL2 (276)
as `tcpdump -i any` writes them, raw IP (101, 228) and BSD loopback (0). Only IPv4 packets are
returned. A file cut short (tcpdump killed mid-write) loses only its last, partial record.
pcapng files are read through dpkt, which is slower but keeps the same output.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("t", "src", "dst", "sport", "dport", "proto", "ip_len", "ecn", "flags", "seq", "ack",
           "tsval", "tsecr", "payload_len", "wire_len")
TCP, UDP = 6, 17
# TCP flag bits in the `flags` column (the 9th bit is AccECN's AE, formerly NS)
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, AE = 1, 2, 4, 8, 16, 32, 64, 128, 256

DTYPES = {"t": np.float64, "src": np.uint32, "dst": np.uint32, "sport": np.uint16, "dport": np.uint16,
          "proto": np.uint8, "ip_len": np.uint16, "ecn": np.uint8, "flags": np.uint16, "seq": np.uint32,
          "ack": np.uint32, "tsval": np.int64, "tsecr": np.int64, "payload_len": np.int32,
          "wire_len": np.uint32}

_MAGIC = {0xA1B2C3D4: 1e-6, 0xA1B23C4D: 1e-9}  # classic pcap: microsecond / nanosecond stamps
_PCAPNG = 0x0A0D0D0A
_RAW = (101, 228, 12, 14)


def read_pcap(path: str | Path) -> pd.DataFrame:
    """One row per IPv4 packet: time (epoch s), addresses, ports, header fields, payload length.

    `tsval`/`tsecr` are -1 when the packet carries no TCP timestamps option; `seq`, `ack`,
    `flags` are 0 for anything but TCP; `wire_len` is the record's original length.
    """
    buf, size = _load(path)
    if size < 24:
        return empty()
    magic = int.from_bytes(buf[:4].tobytes(), "little")
    if magic == _PCAPNG:
        buf, size = _pad(_pcapng_as_classic(path))
        magic = int.from_bytes(buf[:4].tobytes(), "little")
    endian, scale = _header(buf, magic, path)
    linktype = struct.unpack_from(endian + "I", buf, 20)[0] & 0xFFFF
    offsets = record_offsets(buf[:size], endian)
    return decode(buf, offsets, endian, scale, linktype)


# Rows of up to this many bytes are copied out of the file buffer per packet (past the record
# header: link header <= 22, IPv4 header <= 60, TCP header <= 60); the buffer carries this much
# zero padding so that a row starting near the end never runs past it.
_PAD = 256


def _load(path: str | Path) -> tuple[np.ndarray, int]:
    """The file in a zero-padded buffer, and its length. Read once, no copy."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = np.zeros(size + _PAD, np.uint8)
        size = f.readinto(memoryview(buf)[:size])
    return buf, size


def _pad(data: np.ndarray) -> tuple[np.ndarray, int]:
    buf = np.zeros(data.size + _PAD, np.uint8)
    buf[: data.size] = data
    return buf, data.size


def empty() -> pd.DataFrame:
    return decode(np.zeros(24 + _PAD, np.uint8), np.zeros(0, np.int64), "<", 1e-6, 1)


def _header(buf: np.ndarray, magic: int, path: str | Path) -> tuple[str, float]:
    if magic in _MAGIC:
        return "<", _MAGIC[magic]
    swapped = int.from_bytes(buf[:4].tobytes(), "big")
    if swapped in _MAGIC:
        return ">", _MAGIC[swapped]
    raise ValueError(f"{path}: not a pcap file (magic {magic:#010x})")


def record_offsets(buf: np.ndarray | bytes, endian: str = "<") -> np.ndarray:
    """Byte offsets of every complete record. The walk is sequential by nature (each record's
    length says where the next one starts), so it is the one Python loop; it touches 4 bytes
    per record. A partial last record (header or data cut) is left out."""
    data = buf.data if isinstance(buf, np.ndarray) else buf
    incl_len = struct.Struct(endian + "I").unpack_from
    n = len(data)
    out: list[int] = []
    append = out.append
    off = 24
    while off + 16 <= n:
        nxt = off + 16 + incl_len(data, off + 8)[0]
        if nxt > n:
            break
        append(off)
        off = nxt
    return np.asarray(out, dtype=np.int64)


def _rows(buf: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """buf[start_i : start_i + width] for every i, as one (n, width) array. Copying a short
    contiguous row per packet is cache-friendly; gathering field by field is not."""
    window = np.lib.stride_tricks.sliding_window_view(buf, width)
    return window[np.minimum(start, window.shape[0] - 1)]


def _be(cols: np.ndarray) -> np.ndarray:
    """Unsigned big-endian integers (network byte order) from 2 or 4 byte columns of a row
    block: the columns are copied side by side and reinterpreted, no per-byte arithmetic."""
    return np.ascontiguousarray(cols).view(f">u{cols.shape[1]}")[:, 0]


def _link(buf: np.ndarray, base: np.ndarray, linktype: int) -> tuple[np.ndarray, np.ndarray]:
    """(offset of the IP header, whether the frame carries IPv4) for each record."""
    head = _rows(buf, base, 20)
    if linktype == 1:  # Ethernet, maybe one 802.1Q / 802.1ad tag
        etype = _be(head[:, 12:14])
        tagged = (etype == 0x8100) | (etype == 0x88A8)
        etype = np.where(tagged, _be(head[:, 16:18]), etype)
        return base + np.where(tagged, 18, 14), etype == 0x0800
    if linktype == 113:  # Linux cooked v1: 16-byte header, protocol at 14
        return base + 16, _be(head[:, 14:16]) == 0x0800
    if linktype == 276:  # Linux cooked v2: 20-byte header, protocol at 0
        return base + 20, _be(head[:, 0:2]) == 0x0800
    if linktype in _RAW:
        return base, np.ones(base.size, bool)
    if linktype == 0:  # BSD loopback: 4-byte address family in host order
        return base + 4, np.ones(base.size, bool)
    raise ValueError(f"unsupported pcap link type {linktype}")


def decode(buf: np.ndarray, offsets: np.ndarray, endian: str, scale: float, linktype: int) -> pd.DataFrame:
    """Decode the records at `offsets` of a padded buffer into the columns of `read_pcap`."""
    rec = _rows(buf, offsets, 16).view(endian + "u4").astype(np.int64)  # sec, frac, incl, orig
    base = offsets + 16
    end = base + rec[:, 2]  # first byte past the captured data
    l3, is_ip = _link(buf, base, linktype)
    ip = _rows(buf, l3, 20)
    keep = is_ip & (l3 + 20 <= end) & ((ip[:, 0] >> 4) == 4)
    if not keep.all():  # ARP, IPv6, cut headers: rare, so filter only when there are any
        rec, end, l3, ip = rec[keep], end[keep], l3[keep], ip[keep]
    ihl = (ip[:, 0] & 15).astype(np.int64) * 4
    ip_len = _be(ip[:, 2:4]).astype(np.int64)
    proto = ip[:, 9]
    l4 = l3 + ihl
    th = _rows(buf, l4, 60)
    first_fragment = (_be(ip[:, 6:8]) & 0x1FFF) == 0
    ports_ok = first_fragment & ((proto == TCP) | (proto == UDP)) & (l4 + 4 <= end)
    tcp = first_fragment & (proto == TCP) & (l4 + 14 <= end)
    thl = np.where(tcp, (th[:, 12] >> 4).astype(np.int64) * 4, 0)
    hdr = np.where(tcp, thl, np.where(proto == UDP, 8, 0))
    tsval, tsecr = tcp_timestamps(th, np.minimum(thl, end - l4), tcp)
    zero16, zero32 = np.uint16(0), np.uint32(0)
    flags = th[:, 13].astype(np.uint16) | ((th[:, 12] & 1).astype(np.uint16) << 8)
    columns = {
        "t": rec[:, 0] + rec[:, 1] * scale,
        "src": _be(ip[:, 12:16]),
        "dst": _be(ip[:, 16:20]),
        "sport": np.where(ports_ok, _be(th[:, 0:2]), zero16),
        "dport": np.where(ports_ok, _be(th[:, 2:4]), zero16),
        "proto": proto,
        "ip_len": ip_len.astype(np.uint16),
        "ecn": ip[:, 1] & 3,
        "flags": np.where(tcp, flags, zero16),
        "seq": np.where(tcp, _be(th[:, 4:8]), zero32),
        "ack": np.where(tcp, _be(th[:, 8:12]), zero32),
        "tsval": tsval,
        "tsecr": tsecr,
        "payload_len": np.maximum(ip_len - ihl - hdr, 0).astype(np.int32),
        "wire_len": rec[:, 3].astype(np.uint32),
    }
    # native byte order and fixed dtypes; copy=False keeps one array per column (no block
    # consolidation, which would copy every column once more)
    return pd.DataFrame({k: v.astype(DTYPES[k], copy=False) for k, v in columns.items()}, copy=False)


def tcp_timestamps(th: np.ndarray, stop: np.ndarray, tcp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TSval/TSecr from the TCP options in the header rows `th`, -1 where absent. `stop` is
    where each header's options end (its length, or less if the capture was cut). All packets
    walk their option lists in lockstep; Linux puts the timestamps after two NOPs, so most
    finish in three steps."""
    tsval = np.full(th.shape[0], -1, np.int64)
    tsecr = np.full(th.shape[0], -1, np.int64)
    # fast path: NOP, NOP, TS(8, 10) right after the fixed header, as Linux sends it
    linux = tcp & (stop >= 32) & (_be(th[:, 20:24]) == 0x0101080A)
    tsval[linux] = _be(th[linux, 24:28])
    tsecr[linux] = _be(th[linux, 28:32])
    active = np.flatnonzero(tcp & (stop > 20) & ~linux)
    pos = np.full(active.size, 20, np.int64)
    last = th.shape[1] - 1
    for _ in range(40):  # 40 bytes of options at most
        inside = pos < stop[active]
        active, pos = active[inside], pos[inside]
        if not active.size:
            break
        kind = th[active, pos]
        found = (kind == 8) & (pos + 10 <= stop[active])
        hit, at = active[found], pos[found]
        cols = np.minimum(at[:, None] + np.arange(2, 10), last)
        value = th[hit[:, None], cols]
        tsval[hit], tsecr[hit] = _be(value[:, :4]), _be(value[:, 4:])
        length = np.where(kind == 1, 1, th[active, np.minimum(pos + 1, last)].astype(np.int64))
        go_on = (kind != 0) & ~found & ((kind == 1) | (length >= 2))
        active, pos = active[go_on], (pos + length)[go_on]
    return tsval, tsecr


def _pcapng_as_classic(path: str | Path) -> np.ndarray:
    """Re-pack a pcapng file (one interface) as a classic little-endian nanosecond pcap."""
    import dpkt

    with open(path, "rb") as f:
        reader = dpkt.pcapng.Reader(f)
        linktype = reader.datalink()
        chunks = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktype)]
        for ts, frame in reader:
            ns = round(float(ts) * 1e9)
            chunks.append(struct.pack("<IIII", ns // 10**9, ns % 10**9, len(frame), len(frame)))
            chunks.append(bytes(frame))
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def ip_to_int(addr: str) -> int:
    """'10.0.1.2' -> the uint32 the `src`/`dst` columns hold."""
    a, b, c, d = (int(x) for x in addr.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def int_to_ip(value: int) -> str:
    value = int(value)
    return ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))
