"""Per-flow figures from pcaps: goodput, throughput over time, retransmits, RTT, ECN codepoints.

Input frames are `pcap.read_pcap` output. The receiver's capture gives what arrived (goodput,
ECN codepoints as they left the bottleneck); the sender's capture gives what was sent
(retransmits) and the RTT, from TCP timestamps echoed by the receiver, or from ACK matching
when the flow has no timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.pcap import SYN, TCP, UDP

ECN_NAMES = ("not_ect", "ect1", "ect0", "ce")  # index = the IP header's ECN field


@dataclass
class FlowFigures:
    """What the pcaps say about one flow; NaN/None where a capture was missing."""

    name: str
    proto: str = "tcp"
    bytes: float = np.nan  # unique payload bytes delivered to the receiver
    wire_bytes: float = np.nan  # IP bytes of the flow's data packets at the receiver
    first: float = np.nan  # epoch s of the first and last data packet at the receiver
    last: float = np.nan
    goodput_mbps: float = np.nan
    throughput_mbps: float = np.nan
    retransmits: int | None = None
    packets_sent: int | None = None
    packets_received: int | None = None
    ecn_counts: dict[str, int] = field(default_factory=dict)
    rtt: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"t": [], "rtt_ms": []}))
    rtt_source: str | None = None
    timeseries: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)


# ---- selecting a flow's packets

def select(pkts: pd.DataFrame, proto: int, sport: int | None,
           dport: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(data direction, reverse direction) of the connection sport -> dport.

    Without a known source port, the connection to `dport` that carried the most payload is
    taken (iperf3 opens a control connection to the same port next to the data one)."""
    to_dst = pkts[(pkts["proto"] == proto) & (pkts["dport"] == dport)]
    if not sport:
        if to_dst.empty:
            return to_dst, to_dst
        sport = int(to_dst.groupby("sport")["payload_len"].sum().idxmax())
    data = to_dst[to_dst["sport"] == sport]
    back = pkts[(pkts["proto"] == proto) & (pkts["sport"] == dport) & (pkts["dport"] == sport)]
    return data, back


# ---- sequence space

def unwrap(values: np.ndarray, start: int | None = None) -> np.ndarray:
    """32-bit sequence numbers -> int64 that keep growing past 2**32. Steps between
    consecutive values are taken as signed 32-bit (TCP never jumps by 2 GB at once)."""
    v = np.asarray(values, dtype=np.uint32)
    if v.size == 0:
        return np.zeros(0, np.int64)
    first = int(v[0])
    if start is not None:  # place the series next to `start` in the same sequence space
        first = int(start) + (first - int(start) + 2**31) % 2**32 - 2**31
    steps = (v[1:] - v[:-1]).view(np.int32).astype(np.int64)
    return first + np.concatenate([[0], np.cumsum(steps)])


def new_bytes(seq: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Per packet, how many payload bytes it adds to the union of all packets' intervals.
    A byte carried more than once is credited to the carrier with the lowest start (ties: the
    earliest), so the sum is exactly the union and a hole filled late counts when filled.
    (A repacketised retransmission overlapping an original at a lower start takes the credit
    for the overlap; TCP rarely does that, and totals are unaffected.)"""
    if seq.size == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((np.arange(seq.size), seq))  # by start, ties by arrival
    start, end = seq[order], seq[order] + length[order]
    covered = np.maximum.accumulate(end)
    before = np.concatenate([[start[0]], covered[:-1]])
    fresh = np.clip(end - np.maximum(start, before), 0, None)
    out = np.empty_like(fresh)
    out[order] = fresh
    return out


def repeated(seq: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Packets (in send order) that carry bytes already sent: retransmissions."""
    if seq.size == 0:
        return np.zeros(0, bool)
    sent = np.maximum.accumulate(seq + length)
    before = np.concatenate([[seq[0]], sent[:-1]])
    return (length > 0) & (seq < before)


# ---- figures

def goodput(data: pd.DataFrame, proto: int) -> tuple[float, float, float, float]:
    """(unique payload bytes, IP bytes, first, last) of the data packets at the receiver."""
    payload = data["payload_len"].to_numpy(np.int64)
    if proto == TCP:
        carrying = payload > 0
        seq = unwrap(data["seq"].to_numpy()[carrying])
        unique = float(new_bytes(seq, payload[carrying]).sum())
    else:
        carrying = np.ones(payload.size, bool)
        unique = float(payload.sum())
    t = data["t"].to_numpy()[carrying]
    if t.size == 0:
        return 0.0, 0.0, np.nan, np.nan
    return unique, float(data["ip_len"].to_numpy()[carrying].sum()), float(t[0]), float(t[-1])


def rate_mbps(nbytes: float, first: float, last: float) -> float:
    span = last - first
    return nbytes * 8 / span / 1e6 if span > 0 else np.nan


def timeseries(data: pd.DataFrame, proto: int, t0: float, bin_s: float) -> pd.DataFrame:
    """Throughput (IP bytes) and goodput (new payload bytes) per bin, in Mbit/s; `t` is the
    bin's start in seconds since t0."""
    if data.empty:
        return pd.DataFrame({"t": [], "throughput_mbps": [], "goodput_mbps": []})
    payload = data["payload_len"].to_numpy(np.int64)
    fresh = payload.copy()
    if proto == TCP:
        carrying = payload > 0
        fresh[carrying] = new_bytes(unwrap(data["seq"].to_numpy()[carrying]), payload[carrying])
    b = np.floor((data["t"].to_numpy() - t0) / bin_s).astype(np.int64)
    lo, hi = b.min(), b.max()
    wire = np.bincount(b - lo, weights=data["ip_len"].to_numpy(np.float64), minlength=hi - lo + 1)
    good = np.bincount(b - lo, weights=fresh.astype(np.float64), minlength=hi - lo + 1)
    scale = 8 / bin_s / 1e6
    return pd.DataFrame({"t": (np.arange(lo, hi + 1) * bin_s).round(9),
                         "throughput_mbps": wire * scale, "goodput_mbps": good * scale})


def ecn_counts(data: pd.DataFrame, proto: int) -> dict[str, int]:
    """Data packets per ECN codepoint (pure ACKs and SYNs left out)."""
    if proto == TCP:
        data = data[data["payload_len"] > 0]
    counts = np.bincount(data["ecn"].to_numpy(np.int64), minlength=4)
    return {name: int(c) for name, c in zip(ECN_NAMES, counts, strict=True)}


def rtt_from_timestamps(out: pd.DataFrame, back: pd.DataFrame) -> pd.DataFrame:
    """RTT samples seen at one end: a TSval first leaving at t1, first echoed as TSecr at t2.
    At the sender `out` is the data and `back` the ACKs (the RTT of the path and queue)."""
    out = out[(out["tsval"] >= 0) & ((out["flags"] & SYN) == 0)]
    back = back[back["tsecr"] > 0]
    if out.empty or back.empty:
        return pd.DataFrame({"t": [], "rtt_ms": []})
    vals, first_out = np.unique(out["tsval"].to_numpy(), return_index=True)
    echoes, first_back = np.unique(back["tsecr"].to_numpy(), return_index=True)
    common, i, j = np.intersect1d(vals, echoes, assume_unique=True, return_indices=True)
    t1 = out["t"].to_numpy()[first_out[i]]
    t2 = back["t"].to_numpy()[first_back[j]]
    ok = t2 > t1
    order = np.argsort(t2[ok], kind="stable")
    return pd.DataFrame({"t": t2[ok][order], "rtt_ms": (t2 - t1)[ok][order] * 1e3})


def rtt_from_acks(data: pd.DataFrame, acks: pd.DataFrame) -> pd.DataFrame:
    """RTT samples at the sender without timestamps: a segment's first transmission to the
    first ACK covering its end. Segments that were ever retransmitted are left out (Karn)."""
    data = data[data["payload_len"] > 0]
    acks = acks[(acks["flags"] & SYN) == 0]
    if data.empty or acks.empty:
        return pd.DataFrame({"t": [], "rtt_ms": []})
    seq = unwrap(data["seq"].to_numpy())
    end = seq + data["payload_len"].to_numpy(np.int64)
    again = repeated(seq, end - seq)
    first = ~again & ~_overlapping(seq, end, again)
    covered = np.maximum.accumulate(unwrap(acks["ack"].to_numpy(), start=int(data["seq"].iloc[0])))
    k = np.searchsorted(covered, end[first], side="left")
    t1 = data["t"].to_numpy()[first]
    ok = k < covered.size
    t2 = acks["t"].to_numpy()[np.minimum(k, covered.size - 1)]
    ok &= t2 > t1
    order = np.argsort(t2[ok], kind="stable")
    return pd.DataFrame({"t": t2[ok][order], "rtt_ms": (t2 - t1)[ok][order] * 1e3})


def _overlapping(seq: np.ndarray, end: np.ndarray, again: np.ndarray) -> np.ndarray:
    """First transmissions whose bytes some retransmission (an `again` packet) carried once
    more. First transmissions only move forward, so each retransmission overlaps a run of
    them that two binary searches find."""
    orig = np.flatnonzero(~again)
    lo = np.searchsorted(end[orig], seq[again], side="right")
    hi = np.searchsorted(seq[orig], end[again], side="left")
    some = lo < hi
    edges = np.zeros(orig.size + 1, np.int64)
    np.add.at(edges, lo[some], 1)
    np.add.at(edges, hi[some], -1)
    hit = np.zeros(seq.size, bool)
    hit[orig] = np.cumsum(edges[:-1]) > 0
    return hit


# ---- one flow, both captures

def analyse_flow(flow: dict[str, Any], rx: pd.DataFrame | None, tx: pd.DataFrame | None,
                 t0: float, bin_s: float) -> FlowFigures:
    """Figures of one flow (a manifest entry merged with its report) from the receiver's and
    the sender's capture; either capture may be None."""
    name = str(flow.get("name"))
    proto_name = str(flow.get("proto") or ("udp" if flow.get("kind") == "udp" else "tcp"))
    fig = FlowFigures(name=name, proto=proto_name)
    ports = flow.get("ports") or {}
    proto = UDP if proto_name == "udp" else TCP
    if not ports.get("dport"):
        fig.notes.append(f"flow {name}: no ports in its report; cannot find it in the pcaps")
        return fig
    sport, dport = ports.get("sport"), int(ports["dport"])
    if rx is None:
        fig.notes.append(f"flow {name}: no receiver pcap; goodput unknown")
    else:
        _receiver_side(fig, *select(rx, proto, sport, dport), proto, t0, bin_s)
    if tx is None:
        fig.notes.append(f"flow {name}: no sender pcap; retransmits and RTT from the receiver side only")
    else:
        _sender_side(fig, *select(tx, proto, sport, dport), proto)
    if fig.rtt_source is None and rx is not None and proto == TCP:
        data, back = select(rx, proto, sport, dport)
        fig.rtt = rtt_from_timestamps(back, data)  # the receiver's ACK out, the sender's echo back
        fig.rtt_source = "timestamps@receiver" if not fig.rtt.empty else None
    return fig


def _receiver_side(fig: FlowFigures, data: pd.DataFrame, back: pd.DataFrame, proto: int,
                   t0: float, bin_s: float) -> None:
    fig.bytes, fig.wire_bytes, fig.first, fig.last = goodput(data, proto)
    fig.goodput_mbps = rate_mbps(fig.bytes, fig.first, fig.last)
    fig.throughput_mbps = rate_mbps(fig.wire_bytes, fig.first, fig.last)
    fig.packets_received = int((data["payload_len"] > 0).sum()) if proto == TCP else len(data)
    fig.ecn_counts = ecn_counts(data, proto)
    fig.timeseries = timeseries(data, proto, t0, bin_s)
    if data.empty:
        fig.notes.append(f"flow {fig.name}: no data packets in the receiver pcap")


def _sender_side(fig: FlowFigures, data: pd.DataFrame, back: pd.DataFrame, proto: int) -> None:
    if proto != TCP:
        fig.packets_sent = len(data)
        return
    carrying = data[data["payload_len"] > 0]
    fig.packets_sent = len(carrying)
    seq = unwrap(carrying["seq"].to_numpy())
    fig.retransmits = int(repeated(seq, carrying["payload_len"].to_numpy(np.int64)).sum())
    rtt = rtt_from_timestamps(data, back)
    source = "timestamps"
    if rtt.empty:
        rtt, source = rtt_from_acks(data, back), "acks"
    if not rtt.empty:
        fig.rtt, fig.rtt_source = rtt, source
