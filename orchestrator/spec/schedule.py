"""Links that change during a run: rate and delay schedules, and trace-driven capacity.

Three ways to say how the bottleneck changes, all timed from the scenario's start (t = 0,
when the flows are released):

- a **schedule** of steps, `[{at: 0s, rate: 50mbit}, {at: 10s, rate: 10mbit, ramp: 2s}]`:
  the value holds from `at` until the next step; `ramp: D` moves linearly from the previous
  value, reaching the new one at `at + D`. The same form carries `rtt` (or `delay`) steps.
  The schedule's last value holds for the rest of the run.
- a **Mahimahi trace** (`trace: FILE`): one integer per line, a millisecond timestamp at which
  one 1500-byte packet may leave; several lines with one timestamp are several packets. The
  trace repeats with a period of its last timestamp, as mm-link does.
- a **CSV trace** (`trace: FILE.csv`): lines `time_s,rate_mbps` (a header line is allowed);
  the rate holds from its time until the next line, as a schedule of steps.

Pure: no I/O but reading a trace file, no clock. Times are seconds from t = 0, rates bit/s.
The datapaths apply it (nfqueue per packet: bottleneck/service.py; HTB through `steps_for`);
analysis uses it for the capacity in force.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.spec import units

MAHIMAHI_BYTES = 1500  # one delivery opportunity carries this many IP bytes (mm-link)
RAMP_STEP_S = 0.1  # a ramp becomes steps this long where the datapath can only step (HTB)
TRACE_BIN_S = 0.1  # a trace's capacity is recorded and applied (HTB) per bin this long


class ScheduleError(ValueError):
    """Bad schedule or trace input. `key` is the path below the schedule's own key (like
    '[2].at') or empty; `file` is the trace file when the problem is in one."""

    def __init__(self, key: str, message: str, file: str | None = None) -> None:
        self.key, self.message, self.file = key, message, file
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")


# ---------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Segment:
    """The value moves linearly from v0 at t0 to v1 at t1 (v0 == v1: it holds)."""

    t0: float
    t1: float  # math.inf for the last segment
    v0: float
    v1: float

    def value(self, t: float) -> float:
        if self.v0 == self.v1 or self.t1 == math.inf:
            return self.v1
        return self.v0 + (self.v1 - self.v0) * (t - self.t0) / (self.t1 - self.t0)

    @property
    def slope(self) -> float:
        return 0.0 if self.v0 == self.v1 else (self.v1 - self.v0) / (self.t1 - self.t0)


@dataclass(frozen=True)
class Step:
    at: float
    value: float
    ramp: float = 0.0


class Schedule:
    """A piecewise-linear function of time built from steps (see the module's docstring)."""

    def __init__(self, steps: Sequence[Step], what: str = "rate") -> None:
        if not steps:
            raise ScheduleError("", "expected at least one step")
        self.steps = list(steps)
        self.what = what
        segs: list[Segment] = []
        for i, step in enumerate(self.steps):
            end = self.steps[i + 1].at if i + 1 < len(self.steps) else math.inf
            if step.ramp > 0 and i > 0:
                segs.append(Segment(step.at, step.at + step.ramp, self.steps[i - 1].value, step.value))
                if step.at + step.ramp < end:
                    segs.append(Segment(step.at + step.ramp, end, step.value, step.value))
            else:
                segs.append(Segment(step.at, end, step.value, step.value))
        self.segments = segs
        self._starts = [s.t0 for s in segs]

    def __repr__(self) -> str:
        return f"Schedule({self.what}, {self.steps})"

    # ---- values
    def segment_at(self, t: float) -> int:
        return max(bisect.bisect_right(self._starts, t) - 1, 0)

    def value_at(self, t: float) -> float:
        """The value in force at time t (before the first step: the first step's value)."""
        return self.segments[self.segment_at(t)].value(max(t, self.segments[0].t0))

    @property
    def initial(self) -> float:
        return self.steps[0].value

    @property
    def end_s(self) -> float:
        """When the last change is complete: the schedule says nothing new after it."""
        last = self.steps[-1]
        return last.at + last.ramp

    @property
    def max_value(self) -> float:
        return max(s.value for s in self.steps)

    @property
    def min_value(self) -> float:
        return min(s.value for s in self.steps)

    def changes(self) -> list[tuple[float, float, float]]:
        """(time, value before, value after) of every step after the first whose value differs."""
        out = []
        for prev, step in zip(self.steps, self.steps[1:], strict=False):
            if step.value != prev.value:
                out.append((step.at, prev.value, step.value))
        return out

    # ---- integrals (the rate schedule: bits the link can send)
    def integral(self, t0: float, t1: float) -> float:
        """The integral of the value over [t0, t1] (for a rate: bits the link could send)."""
        if t1 <= t0:
            return 0.0
        total, i = 0.0, self.segment_at(t0)
        t = t0
        while t < t1:
            seg = self.segments[i]
            end = min(seg.t1, t1)
            total += (seg.value(t) + seg.value(end)) / 2 * (end - t)
            t, i = end, i + 1
        return total

    def mean(self, t0: float, t1: float) -> float:
        return self.integral(t0, t1) / (t1 - t0) if t1 > t0 else self.value_at(t0)

    def finish(self, t0: float, amount: float, hint: int | None = None) -> tuple[float, int]:
        """The time t at which integral(t0, t) == amount (for a rate: when a packet of
        `amount` bits that starts at t0 has left), and the segment it ends in (pass it back as
        `hint` for the next packet: times only go forward on a link, so that is O(1))."""
        i = self.segment_at(t0) if hint is None or self._starts[hint] > t0 else hint
        while i + 1 < len(self.segments) and self.segments[i + 1].t0 <= t0:
            i += 1
        t, left = t0, amount
        while True:
            seg = self.segments[i]
            v = seg.value(t)
            if seg.t1 == math.inf or seg.slope == 0.0:
                room = v * (seg.t1 - t) if seg.t1 != math.inf else math.inf
                if left <= room:
                    return t + left / v, i
            else:
                room = (v + seg.value(seg.t1)) / 2 * (seg.t1 - t)
                if left <= room:
                    # v*dt + slope*dt^2/2 = left; the root of the right sign, written so that
                    # it does not cancel when the slope is tiny
                    a = seg.slope
                    dt = 2 * left / (v + math.sqrt(max(v * v + 2 * a * left, 0.0)))
                    return t + dt, i
            left -= room
            t, i = seg.t1, i + 1

    def steps_for(self, until: float, ramp_step: float = RAMP_STEP_S) -> list[tuple[float, float]]:
        """Piecewise-constant (time, value) changes for a datapath that can only step (HTB):
        steps exactly; a ramp as steps of `ramp_step`, each at the ramp's mean over its step.
        Starts with (0, initial) and stops before `until`."""
        out: list[tuple[float, float]] = []
        for seg in self.segments:
            if seg.t0 >= until:
                break
            if seg.slope == 0.0:
                out.append((seg.t0, seg.v1))
                continue
            n = max(1, math.ceil((seg.t1 - seg.t0) / ramp_step - 1e-9))
            for k in range(n):
                a = seg.t0 + (seg.t1 - seg.t0) * k / n
                b = seg.t0 + (seg.t1 - seg.t0) * (k + 1) / n
                if a < until:
                    out.append((a, (seg.value(a) + seg.value(b)) / 2))
        merged: list[tuple[float, float]] = []
        for t, v in out:  # a step to the value in force already is no change
            if merged and merged[-1][1] == v:
                continue
            merged.append((t, v))
        return merged


def constant(value: float, what: str = "rate") -> Schedule:
    return Schedule([Step(0.0, value)], what)


# ---------------------------------------------------------------- traces


class MahimahiTrace:
    """Delivery opportunities (ms timestamps) that repeat with the period of the last one."""

    def __init__(self, opportunities_ms: Sequence[int], source: str = "") -> None:
        if not opportunities_ms:
            raise ScheduleError("", "the trace holds no delivery opportunities", source or None)
        self.ms = list(opportunities_ms)
        self.period_ms = self.ms[-1]
        self.source = source
        if self.period_ms <= 0:
            raise ScheduleError("", "the trace's last timestamp must be above 0 ms (it is the "
                                    "period the trace repeats with)", source or None)

    @property
    def per_period(self) -> int:
        return len(self.ms)

    @property
    def mean_rate_bps(self) -> float:
        return self.per_period * MAHIMAHI_BYTES * 8 / (self.period_ms / 1e3)

    def count(self, t0: float, t1: float) -> int:
        """Opportunities at times in (t0, t1] seconds (each one is one 1500-byte packet)."""
        return self._upto(t1) - self._upto(t0)

    def _upto(self, t: float) -> int:
        """Opportunities at times <= t (seconds), counting the repetitions."""
        if t < 0:
            return 0
        ms = math.floor(t * 1e3 + 1e-6)
        k, rest = divmod(ms, self.period_ms)
        return k * self.per_period + bisect.bisect_right(self.ms, rest)

    def next_at(self, t: float) -> tuple[float, int]:
        """The first opportunity at or after t (seconds): (its time, its global index)."""
        ms = max(math.ceil(t * 1e3 - 1e-6), 0)
        k, rest = divmod(ms, self.period_ms)
        j = bisect.bisect_left(self.ms, rest)
        if j == self.per_period:
            k, j = k + 1, 0
        return self.time_of(k * self.per_period + j), k * self.per_period + j

    def time_of(self, index: int) -> float:
        k, j = divmod(index, self.per_period)
        return (k * self.period_ms + self.ms[j]) / 1e3

    def rate_bins(self, until: float, bin_s: float = TRACE_BIN_S) -> list[tuple[float, float]]:
        """(bin start, capacity in bit/s over the bin) from 0 to `until`."""
        n = max(1, math.ceil(until / bin_s - 1e-9))
        return [(k * bin_s, self.count(k * bin_s, (k + 1) * bin_s) * MAHIMAHI_BYTES * 8 / bin_s)
                for k in range(n)]

    def as_schedule(self, until: float, bin_s: float = TRACE_BIN_S) -> Schedule:
        """The trace as rate steps per bin (for a datapath that steps, and for analysis); an
        empty bin gets a 1 kbit/s floor: HTB cannot be set to 0."""
        bins = self.rate_bins(until, bin_s)
        return Schedule([Step(t, max(rate, 1000.0)) for t, rate in bins], "rate")


def load_mahimahi(path: str | Path) -> MahimahiTrace:
    """Read a Mahimahi trace. Errors name the file and line."""
    path = Path(path)
    text = _read(path)
    out: list[int] = []
    prev = 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if not s.isdigit():
            raise ScheduleError(f"line {n}", f"expected a whole number of milliseconds, got {s[:40]!r}",
                                str(path))
        v = int(s)
        if v < prev:
            raise ScheduleError(f"line {n}", f"timestamps must not go backwards: {v} ms after {prev} ms",
                                str(path))
        out.append(v)
        prev = v
    if not out:
        raise ScheduleError("", "the trace is empty (expected one millisecond timestamp per line)",
                            str(path))
    return MahimahiTrace(out, str(path))


def load_csv(path: str | Path) -> Schedule:
    """Read a CSV trace of `time_s,rate_mbps` lines into a rate schedule."""
    path = Path(path)
    text = _read(path)
    steps: list[Step] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        cells = [c.strip() for c in s.split(",")]
        if n == 1 and cells and not _is_number(cells[0]):
            continue  # a header line
        if len(cells) != 2 or not all(_is_number(c) for c in cells):
            raise ScheduleError(f"line {n}", f"expected 'time_s,rate_mbps' with two numbers, got {s[:40]!r}",
                                str(path))
        t, mbps = float(cells[0]), float(cells[1])
        if not mbps > 0:
            raise ScheduleError(f"line {n}", f"expected a positive rate in Mbit/s, got {cells[1]}", str(path))
        if steps and t <= steps[-1].at:
            raise ScheduleError(f"line {n}", f"times must increase: {t:g} s after {steps[-1].at:g} s",
                                str(path))
        if not steps and t != 0:
            raise ScheduleError(f"line {n}", f"the first line must be at time 0, got {t:g} s", str(path))
        steps.append(Step(t, mbps * 1e6))
    if not steps:
        raise ScheduleError("", "the trace is empty (expected lines 'time_s,rate_mbps')", str(path))
    return Schedule(steps, "rate")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ScheduleError("", "trace file not found", str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScheduleError("", f"cannot read the trace: {e}", str(path)) from None


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def load_trace(path: str | Path) -> MahimahiTrace | Schedule:
    """A `.csv` file is a (time, rate) trace; anything else is read as Mahimahi's format."""
    return load_csv(path) if str(path).lower().endswith(".csv") else load_mahimahi(path)


# ---------------------------------------------------------------- parsing spec values


def parse_steps(value: Any, what: str) -> Schedule:
    """A list of `{at: TIME, <what>: VALUE, ramp: TIME}` into a Schedule. `what` is 'rate'
    (values like '10mbit', positive) or 'rtt' (times like '20ms', non-negative)."""
    if not isinstance(value, list) or not value:
        raise ScheduleError("", f"expected a non-empty list of steps like [{{at: 0s, {what}: "
                                f"{'50mbit' if what == 'rate' else '20ms'}}}, ...]")
    steps: list[Step] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ScheduleError(f"[{i}]", f"expected a mapping like {{at: 10s, {what}: ...}}, got {item!r}")
        unknown = set(item) - {"at", what, "ramp"}
        if unknown:
            raise ScheduleError(f"[{i}].{sorted(unknown)[0]}", f"unknown key (expected at, {what}, ramp)")
        for key in ("at", what):
            if key not in item:
                raise ScheduleError(f"[{i}].{key}", "required key is missing")
        at = _time(item["at"], f"[{i}].at")
        if at < 0:
            raise ScheduleError(f"[{i}].at", f"expected a non-negative time, got {item['at']!r}")
        if i == 0 and at != 0:
            raise ScheduleError("[0].at", f"the first step must be at 0s (the scenario's start), "
                                          f"got {item['at']!r}")
        if steps and at <= steps[-1].at:
            raise ScheduleError(f"[{i}].at", f"times must increase: {item['at']!r} comes after "
                                             f"{steps[-1].at:g}s")
        if what == "rate":
            v = _parse(units.rate_bps, item[what], f"[{i}].rate")
            if not v > 0:
                raise ScheduleError(f"[{i}].rate", f"expected a positive rate like '10mbit', "
                                                   f"got {item[what]!r}")
        else:
            v = _time(item[what], f"[{i}].{what}")
            if v < 0:
                raise ScheduleError(f"[{i}].{what}", f"expected a non-negative time like '20ms', "
                                                     f"got {item[what]!r}")
        ramp = _time(item.get("ramp", 0), f"[{i}].ramp")
        if ramp < 0:
            raise ScheduleError(f"[{i}].ramp", f"expected a non-negative time, got {item['ramp']!r}")
        if ramp > 0 and i == 0:
            raise ScheduleError("[0].ramp", "the first step has nothing to ramp from")
        if steps and steps[-1].ramp and steps[-1].at + steps[-1].ramp > at:
            raise ScheduleError(f"[{i}].at", f"starts at {at:g}s, before the ramp of step {i - 1} ends "
                                             f"({steps[-1].at + steps[-1].ramp:g}s)")
        steps.append(Step(at, v, ramp))
    return Schedule(steps, what)


def _time(value: Any, key: str) -> float:
    return _parse(units.seconds, value, key)


def _parse(fn: Any, value: Any, key: str) -> float:
    try:
        return fn(value)
    except ValueError as e:
        raise ScheduleError(key, str(e)) from None
