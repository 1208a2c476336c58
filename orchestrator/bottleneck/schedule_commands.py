"""A link schedule as the commands a router runs, generated as data: `ipfw pipe N config` for
a FreeBSD dummynet router, `tc class change` for a Linux router reached over SSH. The HTB timer
(htb_schedule.py, `timeline` mode) runs them at their times on the router and records how late
each one took effect; tests check every command against ipfw(8)'s grammar.

A timeline is [(t, rate in force, [argv, ...]), ...], t in seconds from the scenario's start.
dummynet's `pipe N config` sets every link parameter it is given and resets the others, so each
change repeats the pipe's whole configuration (bw, delay, queue, AQM) with the new values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from orchestrator.bottleneck.htb_schedule import class_change_argv
from orchestrator.spec.dynamic import LinkDynamics
from orchestrator.testbed.base import Bottleneck

Timeline = list[tuple[float, float, list[list[str]]]]
BASELINE_CLASS = {"parent": "1:", "classid": "1:1", "share": 1.0}  # link.install_shaper's HTB


def _instants(dyn: LinkDynamics, duration_s: float) -> list[float]:
    times = {t for t, _ in dyn.capacity_steps(duration_s)}
    if dyn.rtt is not None:
        times |= {t for t, _ in dyn.rtt.steps_for(duration_s)}
    return sorted(t for t in times if t < duration_s)


def _rate_at(dyn: LinkDynamics, steps: list[tuple[float, float]], t: float, default: float) -> float:
    rate = default
    for at, value in steps:
        if at <= t:
            rate = value
    return rate


def dummynet_timeline(bn: Bottleneck, dyn: LinkDynamics, duration_s: float, aqm: str = "fifo",
                      aqm_args: dict[str, Any] | None = None) -> Timeline:
    """The forward pipe (rate, forward delay, queue, AQM) and the reverse pipe (reverse delay)
    at every instant the schedule changes something."""
    from orchestrator.providers.ssh import freebsd

    share = bn.forward_delay_s / bn.rtt_s if bn.rtt_s > 0 else 0.0
    steps = dyn.capacity_steps(duration_s)
    out: Timeline = []
    prev_rev: int | None = None
    for t in _instants(dyn, duration_s):
        rate = _rate_at(dyn, steps, t, bn.rate_bps)
        rtt = dyn.rtt.value_at(t) if dyn.rtt is not None else bn.rtt_s
        now = dataclasses.replace(bn, rate_bps=rate, forward_delay_s=rtt * share,
                                  reverse_delay_s=rtt * (1 - share))
        cmds = [freebsd._forward(now, aqm, freebsd.aqm_tokens(aqm, aqm_args or {}))[0]]
        rev = freebsd.delay_ms(now.reverse_delay_s, "reverse delay")
        if dyn.rtt is not None and rev != prev_rev:
            cmds.append(["ipfw", "pipe", str(freebsd.PIPE_REVERSE), "config", "delay", str(rev)])
            prev_rev = rev
        out.append((t, rate, cmds))
    return out


def linux_timeline(bn: Bottleneck, dyn: LinkDynamics, duration_s: float,
                   classes: list[dict[str, Any]] | None = None) -> Timeline:
    """`tc class change` of the router's HTB (the baseline 1:1, or the given classes) at every
    capacity step. A Linux router's delay schedule goes to its delay line, not to tc."""
    classes = classes or [BASELINE_CLASS]
    return [(t, rate, [class_change_argv(bn.egress, c, rate) for c in classes])
            for t, rate in dyn.capacity_steps(duration_s) if t < duration_s]


def netem_timeline(bn: Bottleneck, dyn: LinkDynamics, router_ifaces: list[str]) -> Timeline:
    """`tc qdisc change ... netem delay` on the router's interfaces towards the senders (the
    reverse path, where the whole RTT goes by default), for kernels with netem. A forward
    share would need a timer on the receiver too: refused."""
    from orchestrator.errors import UserError

    if dyn.rtt is None:
        return []
    if bn.forward_delay_s > 0:
        raise UserError("an rtt schedule with netem needs the whole RTT on the reverse path "
                        "(rtt:, not delay: {forward, reverse})")
    out: Timeline = []
    for t, rtt in dyn.rtt.steps_for(float("inf")):
        cmds = [["tc", "qdisc", "change", "dev", dev, "root", "netem", "delay", f"{rtt * 1e6:.0f}us",
                 "limit", "100000"] for dev in router_ifaces]
        out.append((t, rtt, cmds))
    return out
