"""Sweep keys `delay.<host>`: the extra one-way delay of a sender's (or receiver's) access
link, changed in place between the points of a sweep, so each flow can have its own base RTT
(RTT = the bottleneck's RTT + 2 x the access delays of its two ends), as heistp/l4s-tests'
scenario 1 gives each of its two flows its own RTT.

The delay line applies these delays on the reverse path of the bottleneck router
(orchestrator/bottleneck/shaping.py, `extra_delay_s`), so changing one restarts it.
"""

from __future__ import annotations

from typing import Any

from orchestrator.bottleneck import shaping
from orchestrator.spec import units
from orchestrator.testbed.base import Testbed

PREFIX = "delay."


def keys(point: dict[str, Any]) -> list[str]:
    return [k for k in point if k.startswith(PREFIX)]


def apply(tb: Testbed, point: dict[str, Any]) -> dict[str, float] | None:
    """Set the access delays the point names; return what was there before (None if the
    point names none), for restore()."""
    names = keys(point)
    if not names:
        return None
    bn = tb.bottleneck
    saved = dict(bn.extra_delay_s)
    for key in names:
        ip = tb.host(key[len(PREFIX):]).address
        bn.extra_delay_s[ip] = units.seconds(point[key])
    tb.save()
    shaping.stop_delay(tb)
    shaping.start_delay(tb)
    return saved


def restore(tb: Testbed, saved: dict[str, float] | None) -> None:
    if saved is None:
        return
    tb.bottleneck.extra_delay_s = saved
    tb.save()
    shaping.stop_delay(tb)
    shaping.start_delay(tb)
