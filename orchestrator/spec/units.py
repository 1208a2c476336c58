"""Parse the units people write in testbed files: rates, times, sizes."""

from __future__ import annotations

import re

_RATE = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 1, "kbps": 1e3, "mbps": 1e6,
         "gbps": 1e9}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_SIZE = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "k": 1e3, "m": 1e6, "kib": 1024,
         "mib": 1024**2}
_NUM = r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*"


def _parse(text: object, table: dict[str, float], example: str) -> float:
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"expected a string with a unit like '{example}', got {text!r}")
    m = re.fullmatch(_NUM + r"([a-z]+)(?:/s)?\s*", text.strip().lower())
    if not m or m.group(2) not in table:
        units = ", ".join(table)
        raise ValueError(f"expected a value with a unit ({units}) like '{example}', got {text!r}")
    return float(m.group(1)) * table[m.group(2)]


def rate_bps(text: object) -> float:
    """'50mbit' -> 50e6 bits per second."""
    return _parse(text, _RATE, "50mbit")


def seconds(text: object) -> float:
    """'20ms' -> 0.02. A bare number is seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    return _parse(text, _TIME, "20ms")


def size_bytes(text: object) -> float:
    """'300kb' -> 300000 bytes."""
    return _parse(text, _SIZE, "300kb")


def fmt_rate(bps: float) -> str:
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g}{unit}"
    return f"{bps:g}bit"


def buffer_size(v: str | int, rate_bps: float, rtt_s: float, mtu: int = 1500) -> tuple[int, int]:
    """-> (packets, bytes). Accepts 1000 (packets), '1000p', '300kb', '1.5bdp'."""
    if isinstance(v, bool):
        raise ValueError(f"expected a buffer like 1000, '300kb' or '1.5bdp', got {v!r}")
    if isinstance(v, int):
        if v <= 0:
            raise ValueError(f"expected a positive number of packets, got {v}")
        return v, v * mtu
    text = v.strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(bdp|p|pkts|packets)", text)
    if m:
        n = float(m.group(1))
        if n <= 0:
            raise ValueError(f"expected a positive buffer, got {v!r}")
        if m.group(2) == "bdp":
            nbytes = max(int(n * rate_bps * rtt_s / 8), 2 * mtu)
            return max(nbytes // mtu, 2), nbytes
        return int(n), int(n) * mtu
    try:
        nbytes = int(size_bytes(text))
    except ValueError:
        raise ValueError(f"expected a buffer like 1000, '1000p', '300kb' or '1.5bdp', "
                         f"got {v!r}") from None
    if nbytes <= 0:
        raise ValueError(f"expected a positive buffer, got {v!r}")
    return max(nbytes // mtu, 1), nbytes
