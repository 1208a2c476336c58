"""A bottleneck that changes during a run: what the spec says, checked, and what each
datapath needs to apply it.

In a testbed file or a scenario's `link:` override:

    bottleneck:
      rate: [{at: 0s, rate: 50mbit}, {at: 10s, rate: 10mbit}, {at: 20s, rate: 50mbit, ramp: 1s}]
      # or  trace: traces/cell.trace   (Mahimahi: ms timestamps; or a .csv of time_s,rate_mbps)
      rtt: [{at: 0s, rtt: 600ms}, {at: 15s, rtt: 40ms}]
      loss: 1%          # or {model: gilbert-elliott, p: 1%, r: 20%, loss_bad: 50%}

Times count from the scenario's start: the moment the flows are released. The run writes that
moment (epoch seconds) to a file on the router (`T0_FILE` in the run's telemetry folder) and
every process that applies the schedule (the nfqueue link, the HTB timer, the delay line)
waits for it; until then the link holds the schedule's first value.

The static figures the rest of the testbed needs (buffer in BDP, sampling, the rate a policy is
told) come from the *nominal* rate: a schedule's first value, or a trace's mean. Policies never
see the schedule: `QueueState.link_rate_bps` stays the nominal rate for the whole run, and a
policy must infer changes from what a router measures (departure rate, backlog, sojourn). That
holds for every policy, AQM-LLM included, and for every datapath.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.spec import loss as lossmod
from orchestrator.spec import schedule as sm
from orchestrator.spec import units

T0_FILE = "schedule-t0"
# What each datapath carries without loss on this kind of machine (README figures,
# bench/datapath_nfqueue.py and bench/datapath_ebpf.py); dummynet: its bw limit.
MAX_RATE_BPS = {"nfqueue": 600e6, "ebpf": 1e9, "kernel": 1e9, "dummynet": float((1 << 31) - 1)}
TRACE_INTERVAL_S = 1.0  # utilisation of a trace-driven run is reported per second


class DynamicsError(ValueError):
    """`key` is relative to the bottleneck ('rate[2].at', 'trace', 'loss.p')."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)


@dataclass
class LinkDynamics:
    rate: sm.Schedule | None = None  # steps (or a CSV trace)
    trace: sm.MahimahiTrace | None = None
    trace_file: str | None = None  # as resolved (absolute), for the manifest and the state
    rtt: sm.Schedule | None = None  # the whole RTT; split between directions like the static one
    loss: lossmod.LossModel | None = None
    source: str = ""  # the file that gave it, and the key path of its bottleneck mapping,
    prefix: str = ""  # so a run-time error names both (e.g. 'links[2].bottleneck.')

    @property
    def dynamic(self) -> bool:
        return any(x is not None for x in (self.rate, self.trace, self.rtt, self.loss))

    @property
    def varies_rate(self) -> bool:
        return self.rate is not None or self.trace is not None

    # ---- figures
    def nominal_rate_bps(self) -> float | None:
        """The rate the static parts use: a schedule's first value, a trace's mean."""
        if self.trace is not None:
            return self.trace.mean_rate_bps
        return self.rate.initial if self.rate is not None else None

    def mean_rate_bps(self, duration_s: float) -> float | None:
        if self.trace is not None:
            return self.trace.mean_rate_bps
        return self.rate.mean(0.0, duration_s) if self.rate is not None else None

    def rate_key(self) -> str:
        return "trace" if self.trace is not None or self.trace_file else "rate"

    def end_s(self) -> float:
        """When the last scheduled change is complete (a trace: one period)."""
        ends = [s.end_s for s in (self.rate, self.rtt) if s is not None]
        if self.trace is not None:
            ends.append(self.trace.period_ms / 1e3)
        return max(ends, default=0.0)

    def capacity_steps(self, duration_s: float) -> list[tuple[float, float]]:
        """(t, bit/s) steps of the capacity, for a datapath that steps (HTB) and for records."""
        if self.trace is not None:
            return self.trace.as_schedule(duration_s).steps_for(duration_s)
        if self.rate is not None:
            return self.rate.steps_for(duration_s)
        return []

    def changes(self) -> list[tuple[float, float, float]]:
        return self.rate.changes() if self.rate is not None else []

    # ---- checks against a run
    def check_run(self, datapath: str, duration_s: float) -> list[str]:
        """Raise DynamicsError for what the datapath cannot do; return warnings (said once)."""
        limit = MAX_RATE_BPS.get(datapath)
        if limit is not None and self.trace is not None and self.trace.mean_rate_bps > limit:
            raise DynamicsError("trace", f"the trace's average rate is {self.trace.mean_rate_bps / 1e6:.1f} "
                                         f"Mbit/s; the {datapath} datapath carries at most "
                                         f"{limit / 1e6:g} Mbit/s here (expected a slower trace)")
        if limit is not None and self.rate is not None and self.rate.max_value > limit:
            raise DynamicsError("rate", f"the schedule reaches {self.rate.max_value / 1e6:g} Mbit/s; the "
                                        f"{datapath} datapath carries at most {limit / 1e6:g} Mbit/s here")
        if self.loss is not None and datapath != "nfqueue":
            raise DynamicsError("loss", f"random loss runs on the nfqueue datapath (this kernel has no "
                                        f"netem for the {datapath} datapath); expected --datapath nfqueue")
        if datapath == "dummynet" and self.trace is not None:
            raise DynamicsError("trace", "a trace on a FreeBSD router needs the divert datapath; "
                                         "dummynet takes rate schedules")
        warnings = []
        for key, sched in (("rate", self.rate), ("rtt", self.rtt)):
            if sched is not None and sched.end_s > duration_s:
                warnings.append(f"{key}: the schedule runs to {sched.end_s:g} s but the run lasts "
                                f"{duration_s:g} s; changes after that are not applied")
        return warnings

    # ---- what the datapaths get
    def nfqueue_config(self, t0_path: str) -> dict[str, Any] | None:
        """config['schedule'] of the nfqueue link process (see bottleneck/service.py, make_service)."""
        if self.trace is not None:
            return {"kind": "mahimahi", "ms": self.trace.ms, "t0_path": t0_path,
                    "initial_rate_bps": self.trace.mean_rate_bps}
        if self.rate is not None:
            return {"kind": "steps", "steps": [[s.at, s.value, s.ramp] for s in self.rate.steps],
                    "t0_path": t0_path, "initial_rate_bps": self.rate.initial}
        return None

    def delay_steps(self, forward_share: float) -> list[list[float]]:
        """[[t, forward s, reverse s], ...] for the delay line (a ramp in 100 ms steps)."""
        if self.rtt is None:
            return []
        return [[t, rtt * forward_share, rtt * (1 - forward_share)]
                for t, rtt in self.rtt.steps_for(math.inf)]

    # ---- records
    def to_json(self) -> dict[str, Any]:
        """JSON form (testbed state, manifests); `from_json` reads it back."""
        def steps(s: sm.Schedule | None) -> list[list[float]] | None:
            return None if s is None else [[x.at, x.value, x.ramp] for x in s.steps]
        return {"rate": steps(self.rate), "trace": self.trace_file, "rtt": steps(self.rtt),
                "loss": self.loss.to_dict() if self.loss is not None else None,
                "source": self.source, "prefix": self.prefix}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> LinkDynamics:
        data = data or {}

        def sched(v: Any, what: str) -> sm.Schedule | None:
            return None if not v else sm.Schedule([sm.Step(*map(float, x)) for x in v], what)
        trace = sm.load_mahimahi(data["trace"]) if data.get("trace") and \
            not str(data["trace"]).lower().endswith(".csv") else None
        rate = sched(data.get("rate"), "rate")
        if data.get("trace") and trace is None:
            rate = sm.load_csv(data["trace"])
        return cls(rate=rate, trace=trace, trace_file=data.get("trace"), rtt=sched(data.get("rtt"), "rtt"),
                   loss=lossmod.LossModel(**data["loss"]) if data.get("loss") else None,
                   source=data.get("source", ""), prefix=data.get("prefix", ""))


def parse(data: dict[str, Any], base_dir: str | Path = ".", source: str = "",
          prefix: str = "") -> LinkDynamics:
    """The dynamic keys of a bottleneck mapping (`rate` as a list, `trace`, `rtt` as a list,
    `loss`). Static values (a rate string, an rtt string) are left to the static spec.
    Raises DynamicsError naming the key below the bottleneck."""
    out = LinkDynamics(source=source, prefix=prefix)
    rate = data.get("rate")
    if isinstance(rate, list) or isinstance(rate, dict):
        out.rate = _steps(rate, "rate")
    trace = data.get("trace")
    if trace is not None:
        if rate is not None:
            raise DynamicsError("trace", "give either 'rate' or 'trace', not both")
        if not isinstance(trace, str) or not trace.strip():
            raise DynamicsError("trace", f"expected a file name, got {trace!r}")
        path = Path(trace) if Path(trace).is_absolute() else Path(base_dir) / trace
        try:
            loaded = sm.load_trace(path)
        except sm.ScheduleError as e:
            raise DynamicsError("trace", str(e)) from None
        out.trace_file = str(path.resolve())
        if isinstance(loaded, sm.MahimahiTrace):
            out.trace = loaded
        else:
            out.rate = loaded
    rtt = data.get("rtt")
    if isinstance(rtt, list) or isinstance(rtt, dict):
        out.rtt = _steps(rtt, "rtt")
    if data.get("loss") is not None:
        try:
            out.loss = lossmod.parse(data["loss"])
        except sm.ScheduleError as e:
            raise DynamicsError("loss" + e.key, e.message) from None
    return out


def _steps(value: Any, what: str) -> sm.Schedule:
    try:
        return sm.parse_steps(value, what)
    except sm.ScheduleError as e:
        raise DynamicsError(what + e.key, e.message) from None


def is_static_rate(value: Any) -> bool:
    return isinstance(value, str)


# ---------------------------------------------------------------- the scenario's start


def write_t0(put: Callable[[str, str], None], path: str, t0_epoch: float) -> None:
    """Tell every schedule applier when t = 0 is (they poll for the file)."""
    put(path, json.dumps({"t0_epoch": t0_epoch}))


def read_t0(path: str | Path) -> float | None:
    try:
        return float(json.loads(Path(path).read_text())["t0_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_t0(path: str | Path, stopping: Callable[[], bool], poll_s: float = 0.005) -> float | None:
    while not stopping():
        t0 = read_t0(path)
        if t0 is not None:
            return t0
        time.sleep(poll_s)
    return None


def describe(dyn: LinkDynamics) -> str:
    """One line for `testbed up` and run headers."""
    parts = []
    if dyn.trace is not None:
        name = Path(dyn.trace_file or "").name
        parts.append(f"trace {name} (mean {dyn.trace.mean_rate_bps / 1e6:.1f} Mbit/s)")
    elif dyn.rate is not None:
        parts.append("rate " + " -> ".join(units.fmt_rate(s.value) for s in dyn.rate.steps))
    if dyn.rtt is not None:
        parts.append("rtt " + " -> ".join(f"{s.value * 1e3:g}ms" for s in dyn.rtt.steps))
    if dyn.loss is not None:
        parts.append(f"loss {dyn.loss.mean_loss:.2%}")
    return ", ".join(parts)


# ---------------------------------------------------------------- link mappings in files

LINK_KEYS = ("rate", "rtt", "buffer", "trace", "loss")


def with_absolute_trace(data: Any, base_dir: str | Path) -> Any:
    """A copy of a link mapping with `trace` made absolute (relative to the file that gave
    it), so the mapping means the same wherever it is read later (state, sweeps, manifests)."""
    if not isinstance(data, dict) or not isinstance(data.get("trace"), str) or not data["trace"].strip():
        return data
    path = Path(data["trace"])
    return {**data, "trace": str(path if path.is_absolute() else (Path(base_dir) / path).resolve())}


def check_mapping(data: Any, base_dir: str | Path, source: str, prefix: str,
                  allowed: tuple[str, ...] = LINK_KEYS) -> LinkDynamics:
    """Check a link mapping (a scenario's `link:` override, or the dynamic keys of a
    bottleneck) and return its dynamics. Raises SpecError naming the file and the key."""
    from orchestrator.errors import SpecError

    where = prefix.rstrip(".")
    if not isinstance(data, dict):
        raise SpecError(source, where, f"expected a mapping with some of: {', '.join(allowed)}")
    for key in data:
        if key not in allowed:
            raise SpecError(source, prefix + str(key), f"unknown key (expected one of: {', '.join(allowed)})")
    if isinstance(data.get("rate"), str) and _bad(units.rate_bps, data["rate"], lambda v: v > 0):
        raise SpecError(source, prefix + "rate", f"expected a positive rate like '50mbit' or a list of "
                                                 f"steps, got {data['rate']!r}")
    if isinstance(data.get("rtt"), str) and _bad(units.seconds, data["rtt"], lambda v: v >= 0):
        raise SpecError(source, prefix + "rtt", f"expected a time like '20ms' or a list of steps, "
                                                f"got {data['rtt']!r}")
    for key in ("rate", "rtt"):
        if key in data and not isinstance(data[key], (str, list)):
            example = "50mbit" if key == "rate" else "20ms"
            raise SpecError(source, prefix + key, f"expected a value like {example!r} or a list of "
                                                  f"steps, got {data[key]!r}")
    if "buffer" in data:
        try:
            units.buffer_size(data["buffer"], 1e6, 0.02)
        except ValueError as e:
            raise SpecError(source, prefix + "buffer", str(e)) from None
    try:
        return parse(data, base_dir, source, prefix)
    except DynamicsError as e:
        raise SpecError(source, prefix + e.key, e.message) from None


def _bad(fn: Callable[[Any], float], value: Any, ok: Callable[[float], bool]) -> bool:
    try:
        return not ok(fn(value))
    except ValueError:
        return True


def nominal(data: dict[str, Any], dyn: LinkDynamics | None = None) -> tuple[float | None, float | None]:
    """(rate bit/s, RTT s) the static parts use for a link mapping: a static value as given,
    a schedule's first value, a trace's mean; None where the mapping says nothing."""
    dyn = dyn if dyn is not None else parse(data)
    rate = dyn.nominal_rate_bps()
    if rate is None and isinstance(data.get("rate"), str):
        rate = units.rate_bps(data["rate"])
    rtt = dyn.rtt.initial if dyn.rtt is not None else (
        units.seconds(data["rtt"]) if isinstance(data.get("rtt"), str) else None)
    return rate, rtt
