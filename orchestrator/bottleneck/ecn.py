"""The IPv4 header bits a bottleneck reads and writes: the L4S classifier (RFC 9331), CE
marking with an incremental checksum update (RFC 1624), TCP SYN detection."""

from __future__ import annotations


def classify(tos: int) -> int:
    """L (0) for ECT(1) (01) and CE (11), C (1) for Not-ECT (00) and ECT(0) (10)."""
    return 0 if tos & 1 else 1


def set_ce(data: bytes) -> bytes:
    """The packet with ECN = CE and its IPv4 header checksum updated incrementally (RFC 1624,
    eqn. 3: HC' = ~(~HC + ~m + m')), so the payload is never summed."""
    old = data[0] << 8 | data[1]
    new = old | 3
    s = (~(data[10] << 8 | data[11]) & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    csum = ~s & 0xFFFF
    return b"".join((data[:1], bytes((new & 0xFF,)), data[2:10], csum.to_bytes(2, "big"), data[12:]))


def ipv4_checksum(header: bytes) -> int:
    """The checksum field's correct value for an IPv4 header (its own field counted as 0)."""
    words = header[:10] + b"\0\0" + header[12:]
    s = sum(int.from_bytes(words[i:i + 2], "big") for i in range(0, len(words), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def is_tcp_syn(data: bytes) -> bool:
    if data[9] != 6:
        return False
    flags_at = (data[0] & 0x0F) * 4 + 13
    return len(data) > flags_at and bool(data[flags_at] & 0x02)
