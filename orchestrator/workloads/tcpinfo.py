"""struct tcp_info (linux/tcp.h) from getsockopt(TCP_INFO) bytes, the fields the reports keep.

Offsets are the uapi layout, stable across kernels (fields are only ever appended); fields a
kernel does not fill are read as 0. Stdlib only: this runs inside the sender's namespace.
"""

from __future__ import annotations

import socket
import struct

SIZE = 280  # up to the AccECN counters of 6.18; older kernels return fewer bytes
CA_STATES = ("open", "disorder", "cwr", "recovery", "loss")
TCPI_OPT_ECN = 8
TCPI_OPT_ECN_SEEN = 16

# name: (struct format, offset)
FIELDS = {
    "state": ("B", 0), "ca_state": ("B", 1), "options": ("B", 5),
    "rto_us": ("I", 8), "snd_mss": ("I", 16), "unacked": ("I", 24), "lost": ("I", 32),
    "rtt_us": ("I", 68), "rttvar_us": ("I", 72), "snd_ssthresh": ("I", 76), "cwnd": ("I", 80),
    "total_retrans": ("I", 100), "pacing_rate": ("Q", 104), "bytes_acked": ("Q", 120),
    "bytes_received": ("Q", 128), "notsent_bytes": ("I", 144), "min_rtt_us": ("I", 148),
    "delivery_rate": ("Q", 160), "delivered": ("I", 192), "delivered_ce": ("I", 196),
    "bytes_sent": ("Q", 200), "bytes_retrans": ("Q", 208),
    "received_ce": ("I", 248), "delivered_e1_bytes": ("I", 252), "delivered_e0_bytes": ("I", 256),
    "delivered_ce_bytes": ("I", 260), "received_e1_bytes": ("I", 264),
    "received_e0_bytes": ("I", 268), "received_ce_bytes": ("I", 272),
    "accecn_fail_mode": ("H", 276), "accecn_opt_seen": ("H", 278),
}

# The columns of a report's "tcp_info" rows (rates in bit/s, as the report schema says).
COLUMNS = ["t", "rtt_us", "cwnd", "delivery_rate_bps", "total_retrans", "bytes_acked", "ca_state",
           "delivered", "delivered_ce", "min_rtt_us", "pacing_rate_bps", "snd_ssthresh", "unacked"]


def parse(raw: bytes) -> dict[str, int]:
    buf = raw.ljust(SIZE, b"\0")
    return {k: struct.unpack_from("<" + fmt, buf, off)[0] for k, (fmt, off) in FIELDS.items()}


def read(sock: socket.socket) -> dict[str, int]:
    return parse(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, SIZE))


def row(t: float, info: dict[str, int]) -> list[float | int]:
    return [round(t, 6), info["rtt_us"], info["cwnd"], info["delivery_rate"] * 8,
            info["total_retrans"], info["bytes_acked"], info["ca_state"], info["delivered"],
            info["delivered_ce"], info["min_rtt_us"], info["pacing_rate"] * 8,
            info["snd_ssthresh"], info["unacked"]]


def ecn_summary(info: dict[str, int]) -> dict[str, object]:
    """What the connection negotiated: classic ECN, AccECN (the AccECN byte counters only move
    under AccECN), and what the peer fed back."""
    return {
        "ecn": bool(info["options"] & TCPI_OPT_ECN),
        "accecn": bool(info["accecn_opt_seen"] or info["delivered_e1_bytes"]
                       or info["delivered_e0_bytes"] or info["received_e1_bytes"]
                       or info["received_e0_bytes"]),
        "delivered_ce": info["delivered_ce"],
        "delivered_e1_bytes": info["delivered_e1_bytes"],
        "delivered_e0_bytes": info["delivered_e0_bytes"],
        "delivered_ce_bytes": info["delivered_ce_bytes"],
        "received_ce": info["received_ce"],
    }
