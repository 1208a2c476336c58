"""Parse the units people write in testbed files: rates, times, sizes."""

from __future__ import annotations

import math
import re
from typing import Any

_RATE = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 1, "kbps": 1e3, "mbps": 1e6,
         "gbps": 1e9}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_SIZE = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "k": 1e3, "m": 1e6, "kib": 1024,
         "mib": 1024**2}
# the sign is matched so that '-5ms' is told it is negative, not that it lacks a unit
_NUM = r"\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*"


def finite(value: float, text: object) -> float:
    """`value` if finite: '1e400mbit' or 'inf' must fail here, not as an OverflowError in tc."""
    if not math.isfinite(value):
        raise ValueError(f"expected a finite value, got {text!r}")
    return value


def _parse(text: object, table: dict[str, float], example: str) -> float:
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"expected a string with a unit like '{example}', got {text!r}")
    m = re.fullmatch(_NUM + r"([a-z]+)(?:/s)?\s*", text.strip().lower())
    if not m or m.group(2) not in table:
        units = ", ".join(table)
        raise ValueError(f"expected a value with a unit ({units}) like '{example}', got {text!r}")
    value = finite(float(m.group(1)) * table[m.group(2)], text)
    if value < 0:
        raise ValueError(f"expected a non-negative value like '{example}', got {text!r}")
    return value


def rate_bps(text: object) -> float:
    """'50mbit' -> 50e6 bits per second."""
    return _parse(text, _RATE, "50mbit")


def seconds(text: object) -> float:
    """'20ms' -> 0.02. A bare number is seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if finite(float(text), text) < 0:
            raise ValueError(f"expected a non-negative time like '20ms', got {text!r}")
        return float(text)
    return _parse(text, _TIME, "20ms")


def size_bytes(text: object) -> float:
    """'300kb' -> 300000 bytes."""
    return _parse(text, _SIZE, "300kb")


def needs_unit(example: str) -> Any:
    """A pydantic before-validator: a bare number where a unit is needed gets told so (and not
    pydantic's 'Input should be a valid string')."""
    def check(cls: Any, v: object) -> object:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            raise ValueError(f"expected a value with a unit like '{example}', got {v!r} without one")
        return v
    return classmethod(check)


def fmt_rate(bps: float) -> str:
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g}{unit}"
    return f"{bps:g}bit"


# Bounds of what the datapaths can honour: tc's limit is a u32 of packets but a million
# packets of 1500 bytes is already 1.5 GB of router memory; rates outside 1 kbit/s..100 Gbit/s
# are below one packet a second or beyond any veth; delays over 10 s are beyond what netem and
# the delay lines are built for (and what an experiment of minutes can show).
MAX_BUFFER_PKTS = 1_000_000
MIN_RATE_BPS, MAX_RATE_BPS = 1e3, 100e9
MAX_DELAY_S = 10.0


def bounded_rate(text: object) -> float:
    """A rate within MIN_RATE_BPS..MAX_RATE_BPS, else a ValueError that says the range."""
    bps = rate_bps(text)
    if not MIN_RATE_BPS <= bps <= MAX_RATE_BPS:
        raise ValueError(f"expected a rate from 1kbit to 100gbit, got {text!r}")
    return bps


def bounded_delay(text: object) -> float:
    """A time within 0..MAX_DELAY_S, else a ValueError that says the range."""
    s = seconds(text)
    if s > MAX_DELAY_S:
        raise ValueError(f"expected a time from 0 to {MAX_DELAY_S:g}s, got {text!r}")
    return s


def buffer_size(v: str | int, rate_bps: float, rtt_s: float, mtu: int = 1500) -> tuple[int, int]:
    """-> (packets, bytes). Accepts 1000 (packets), '1000p', '300kb', '1.5bdp'; at most
    MAX_BUFFER_PKTS packets, so a buffer of 1e12 packets fails here and not in tc."""
    pkts, nbytes = _buffer_size(v, rate_bps, rtt_s, mtu)
    if pkts > MAX_BUFFER_PKTS:
        raise ValueError(f"expected a buffer of at most {MAX_BUFFER_PKTS} packets, got {v!r} "
                         f"({pkts} packets)")
    return pkts, nbytes


def _buffer_size(v: str | int, rate_bps: float, rtt_s: float, mtu: int) -> tuple[int, int]:
    if isinstance(v, bool):
        raise ValueError(f"expected a buffer like 1000, '300kb' or '1.5bdp', got {v!r}")
    if isinstance(v, int):
        if v <= 0:
            raise ValueError(f"expected a positive number of packets, got {v}")
        return v, v * mtu
    if not isinstance(v, str):
        raise ValueError(f"expected a buffer like 1000, '300kb' or '1.5bdp', got {v!r}")
    text = v.strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(bdp|p|pkts|packets)", text)
    if m:
        n = finite(float(m.group(1)), v)
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
