"""The nfqueue link's service model under a dynamic link: how long the link takes to send
a packet when its rate follows a schedule or a Mahimahi trace, in the link's virtual clock;
random loss; and the capacity record the link process leaves (telemetry/capacity.json).
Pure but for writing that record."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from orchestrator.spec import schedule as sm
from orchestrator.spec.schedule import MAHIMAHI_BYTES, MahimahiTrace, Schedule

PRE_T0_S = 3600.0  # a capacity step this long before t0 stands for "before the run's start"


class RateService:
    """How long the link takes to send a packet under a rate schedule, in the link's virtual
    clock: a packet that starts at `start` ends when the schedule's integral from `start`
    reaches its bits, so a change takes effect at its stated time even mid-packet."""

    def __init__(self, schedule: Schedule, t0: float) -> None:
        self.schedule, self.t0 = schedule, t0  # t0: the schedule's 0 on the caller's clock
        self.hint = 0

    def send(self, start: float, wire_bytes: int) -> tuple[float, float]:
        """(when the packet starts, when it has left)."""
        end, self.hint = self.schedule.finish(start - self.t0, wire_bytes * 8.0, self.hint)
        return start, end + self.t0

    def rate_at(self, t: float) -> float:
        return self.schedule.value_at(t - self.t0)


class TraceService:
    """Mahimahi's delivery opportunities (mm-link's LinkQueue): each opportunity may carry
    1500 IP bytes from the head of the queue; a packet larger than what is left of one goes on
    at the next ones; what an opportunity does not use is lost. A packet leaves at the
    opportunity that carries its last byte. Sizes are IP bytes, as Mahimahi counts them."""

    def __init__(self, trace: MahimahiTrace, t0: float, l2_header: int = 14) -> None:
        self.trace, self.t0, self.l2 = trace, t0, l2_header
        self.index = -1  # the opportunity in use
        self.at = -math.inf  # its time (caller's clock)
        self.left = 0  # bytes it still carries
        self.used = 0  # opportunities that carried something

    def send(self, start: float, wire_bytes: int) -> tuple[float, float]:
        need = max(wire_bytes - self.l2, 1)
        if not (self.left > 0 and start <= self.at):
            at, index = self.trace.next_at(start - self.t0)
            if index <= self.index:  # used up already (several opportunities in one ms)
                index = self.index + 1
                at = self.trace.time_of(index)
            self.index, self.at, self.left = index, at + self.t0, MAHIMAHI_BYTES
            self.used += 1
        first = self.at
        while need > self.left:
            need -= self.left
            self.index += 1
            self.at, self.left = self.trace.time_of(self.index) + self.t0, MAHIMAHI_BYTES
            self.used += 1
        self.left -= need
        return first, self.at

    def rate_at(self, t: float) -> float:
        rel = t - self.t0
        return self.trace.count(rel - 0.5, rel + 0.5) * MAHIMAHI_BYTES * 8.0


def make_service(config: dict[str, Any], epoch_offset: float, t0_epoch: float | None = None) -> Any:
    """The service model of config['schedule'] on the monotonic clock, or None (fixed rate).

    config['schedule']: {'kind': 'steps', 'steps': [[at, bit/s, ramp], ...]} or
    {'kind': 'mahimahi', 'ms': [...]}, with 't0_epoch' (the epoch of the schedule's 0) or a
    't0_path' the run writes it to when the flows start (then pass it as t0_epoch)."""
    sched = config.get("schedule")
    if not sched:
        return None
    t0 = float(sched["t0_epoch"] if t0_epoch is None else t0_epoch) - epoch_offset
    if sched["kind"] == "mahimahi":
        return TraceService(MahimahiTrace(sched["ms"]), t0)
    steps = [sm.Step(float(at), float(v), float(ramp)) for at, v, ramp in sched["steps"]]
    return RateService(Schedule(steps, "rate"), t0)


def make_loss(config: dict[str, Any]) -> Any:
    if not config.get("loss"):
        return None
    from orchestrator.spec.loss import Loss, LossModel

    seed = config.get("seed")
    return Loss(LossModel(**config["loss"]), seed=None if seed is None else seed + 7919)


def write_capacity(config: dict[str, Any], link: Any, t0_epoch: float | None, end_epoch: float) -> None:
    """telemetry/capacity.json: the capacity in force (steps, epoch seconds and bit/s), the
    schedule's changes, and samples taken every tupdate from the service model in force."""
    sched = config.get("schedule")
    if not sched:
        return
    out: dict[str, Any] = {"datapath": "nfqueue", "kind": sched["kind"], "t0_epoch": t0_epoch,
                           "samples": [[t, r] for t, r in link.capacity],
                           "note": "applied exactly per packet in the link's virtual clock"}
    if t0_epoch is None:  # the flows never started: the link held its first rate throughout
        out.update(steps=[], changes=[])
    elif sched["kind"] == "mahimahi":
        trace = sm.MahimahiTrace(sched["ms"])
        # before t0 the link ran at the trace's mean (the nominal rate): a step well before
        # t0 says so (analysis folds it into t = 0, where the first bin replaces it)
        out["steps"] = [[t0_epoch - PRE_T0_S, trace.mean_rate_bps]] + [
            [t0_epoch + t, r] for t, r in trace.rate_bins(max(end_epoch - t0_epoch, 0.1))]
        out["changes"] = []
        out["opportunities_used"] = link.service.used if link.service is not None else 0
        out["opportunities_offered"] = trace.count(-1.0, end_epoch - t0_epoch)
    else:
        schedule = sm.Schedule([sm.Step(*map(float, x)) for x in sched["steps"]], "rate")
        until = max(end_epoch - t0_epoch, 0.0) + 1e-9
        out["steps"] = [[t0_epoch + t, r] for t, r in schedule.steps_for(until)]
        out["changes"] = [list(c) for c in schedule.changes()]
    Path(config["telemetry_dir"], "capacity.json").write_text(json.dumps(out))
