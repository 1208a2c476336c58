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
