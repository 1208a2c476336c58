"""The contract between AQM policies and datapaths.

A policy is pure logic: it sees a `QueueState` every `tupdate` and answers with a `Decision`,
a per-class distribution over {enqueue, drop, mark}. A datapath (kernel qdisc, eBPF, NFQUEUE)
applies the decision per packet by a coin toss. Policies that must act per packet (CoDel)
also implement `on_dequeue`, which only datapaths with a per-packet hook (nfqueue) call.

Nothing here does I/O, so the same policy object runs in every datapath and in unit tests.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from policies.errors import ParamError

CLASSES = ("l4s", "classic")


class Action(enum.IntEnum):
    """What happens to one packet. Values are stable: they are logged in telemetry."""

    ENQUEUE = 0
    DROP = 1
    MARK = 2  # CE-mark; a Not-ECT packet that draws MARK is dropped instead (RFC 3168)


@dataclass(frozen=True)
class ClassState:
    """One queue class as seen over the last update interval."""

    sojourn_ms: float = 0.0  # mean sojourn of packets dequeued in the interval (0 if none)
    sojourn_max_ms: float = 0.0  # max sojourn in the interval
    head_sojourn_ms: float = 0.0  # age of the packet at the head now (0 if empty)
    backlog_bytes: int = 0
    backlog_pkts: int = 0
    arrival_bps: float = 0.0
    departure_bps: float = 0.0
    arrivals: int = 0  # packets arrived in the interval
    drops: int = 0  # packets dropped in the interval (AQM and overflow)
    marks: int = 0  # packets CE-marked in the interval


@dataclass(frozen=True)
class QueueState:
    """What a policy sees every tupdate. `history` holds the last few values per class."""

    t: float  # seconds since the datapath started
    dt: float  # seconds since the previous update
    # the link's nominal rate, fixed for the run: on a link that changes during the run (a
    # schedule or a trace) it stays the rate the run started with (a trace's mean). The
    # schedule is hidden from every policy, AQM-LLM included: changes must be inferred from
    # what a router measures (departure rate, backlog, sojourn).
    link_rate_bps: float
    l4s: ClassState = field(default_factory=ClassState)
    classic: ClassState = field(default_factory=ClassState)
    # per class, oldest first, the last HISTORY_LEN values of sojourn_ms and arrival_bps;
    # shorter at the start of a run
    sojourn_history: dict[str, tuple[float, ...]] = field(default_factory=dict)
    rate_history: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def of(self, cls: str) -> ClassState:
        return self.l4s if cls == "l4s" else self.classic

    def total_backlog_bytes(self) -> int:
        return self.l4s.backlog_bytes + self.classic.backlog_bytes

    def flat(self) -> dict[str, float]:
        """A flat row of scalars (control-loop Parquet columns, model features)."""
        row: dict[str, float] = {"t": self.t, "dt": self.dt, "link_rate_bps": self.link_rate_bps}
        for cls in CLASSES:
            for key, value in dataclasses.asdict(self.of(cls)).items():
                row[f"{cls}_{key}"] = float(value)
        return row


HISTORY_LEN = 16


@dataclass(frozen=True)
class ClassDecision:
    """Probabilities for one class; p_enqueue = 1 - p_drop - p_mark."""

    p_drop: float = 0.0
    p_mark: float = 0.0
    # L4S native AQM: CE-mark every packet whose sojourn exceeds this (ms); None disables
    step_threshold_ms: float | None = None
    # the step in packets instead (Linux sch_dualpi2 `step_thresh Np`): CE-mark a packet that
    # leaves while more than this many packets remain in its queue; None: the step is in time
    step_threshold_pkts: int | None = None
    # the step applies only to packets that found at least this many packets in their queue
    # on arrival (sch_dualpi2 min_qlen_step; 0: always)
    min_qlen_step: int = 0
    # toss the drop/mark coin when the packet leaves, with the probability then in force and
    # the backlog it leaves behind (sch_dualpi2 drop_dequeue, its default), not on arrival
    coin_at_dequeue: bool = False

    def __post_init__(self) -> None:
        if not (0.0 <= self.p_drop <= 1.0 and 0.0 <= self.p_mark <= 1.0):
            raise ValueError(f"probabilities out of [0, 1]: {self}")
        if self.p_drop + self.p_mark > 1.0 + 1e-9:
            raise ValueError(f"p_drop + p_mark > 1: {self}")

    @property
    def p_enqueue(self) -> float:
        return max(0.0, 1.0 - self.p_drop - self.p_mark)

    def action(self, u: float, sojourn_ms: float = 0.0, ecn_capable: bool = True,
               qlen_after: int = 0) -> Action:
        """The reference per-packet reading of this decision; `u` is a uniform draw in [0, 1).

        The coin's drop comes first, then the step (every packet whose sojourn exceeds the
        threshold is marked, as in Linux sch_dualpi2), then the coin's mark. A mark on a
        Not-ECT packet is a drop (RFC 3168; Linux do_step_aqm() drops a stepped Not-ECT packet
        too). Datapaths should read decisions this way; tests use it.
        """
        if u < self.p_drop:
            return Action.DROP
        if self.step_threshold_pkts is not None:  # `qlen_after`: packets left in the queue
            stepped = qlen_after > self.step_threshold_pkts
        else:
            stepped = self.step_threshold_ms is not None and sojourn_ms > self.step_threshold_ms
        if stepped or u < self.p_drop + self.p_mark:
            return Action.MARK if ecn_capable else Action.DROP
        return Action.ENQUEUE


@dataclass(frozen=True)
class Decision:
    l4s: ClassDecision = field(default_factory=ClassDecision)
    classic: ClassDecision = field(default_factory=ClassDecision)

    def of(self, cls: str) -> ClassDecision:
        return self.l4s if cls == "l4s" else self.classic

    def flat(self) -> dict[str, float]:
        row: dict[str, float] = {}
        for cls in CLASSES:
            d = self.of(cls)
            row[f"{cls}_p_drop"] = d.p_drop
            row[f"{cls}_p_mark"] = d.p_mark
            row[f"{cls}_step_ms"] = -1.0 if d.step_threshold_ms is None else d.step_threshold_ms
        return row


@dataclass(frozen=True)
class QueueConfig:
    """Static shape a policy asks of the datapath's queues."""

    dualq: bool = False  # separate L (ECT(1), CE) and C queues with the DualQ scheduler
    c_protection: float = 0.10  # share of the link the C queue is guaranteed (RFC 9332 WRR)
    limit_pkts: int | None = None  # None: the testbed's buffer
    tupdate_s: float = 0.016
    # no drop or mark while the backlog is below this (bytes); None: the datapath's default,
    # 2 MTU as in Linux sch_dualpi2 and PIE
    min_backlog_bytes: int | None = None


@dataclass
class Params:
    """Base for each policy's parameter dataclass. Field metadata 'help' documents a field."""

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Params:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in args.items():
            if key not in fields:
                raise ParamError(f"unknown parameter '{key}' (expected one of: {', '.join(fields)})")
            values[key] = _coerce(key, raw, fields[key])
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(name, default, help) per parameter, for `testbed policies`."""
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append((f.name, default, f.metadata.get("help", "")))
        return out


def require(ok: bool, key: str, expected: str, value: Any) -> None:
    """For range checks in a Params' __post_init__: a ParamError naming `key` unless `ok`."""
    if not ok:
        raise ParamError(f"parameter '{key}': expected {expected}, got {value!r}")


def _coerce(key: str, raw: Any, f: dataclasses.Field) -> Any:
    kind = f.type if isinstance(f.type, type) else {"float": float, "int": int, "bool": bool,
                                                       "str": str}.get(str(f.type).split(" ")[0])
    if kind is None:
        return raw
    if not isinstance(raw, str):
        # a value from a YAML file already has a type: accept only the field's own (an int
        # for a float), so `limit: [1, 2]` is a clear error here, not a TypeError later
        ok = (isinstance(raw, bool) if kind is bool else
              isinstance(raw, (int, float)) and not isinstance(raw, bool) if kind is float else
              isinstance(raw, int) and not isinstance(raw, bool) if kind is int else
              isinstance(raw, kind))
        if not ok:
            raise ParamError(f"parameter '{key}': expected {kind.__name__}, got {raw!r}")
        value = float(raw) if kind is float else raw
    else:
        try:
            if kind is bool:
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            value = kind(raw)
        except ValueError:
            raise ParamError(f"parameter '{key}': expected {kind.__name__}, got '{raw}'") from None
    if kind is float and not math.isfinite(value):
        raise ParamError(f"parameter '{key}': expected a finite number, got {raw!r}")
    return value


class Policy:
    """Base class. Subclasses set `name`, `Params`, and implement `update`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    # datapaths that can run this policy; `per_packet` policies need a per-packet hook
    datapaths: ClassVar[tuple[str, ...]] = ("nfqueue", "ebpf", "kernel")
    per_packet: ClassVar[bool] = False
    # per datapath, where it cannot do what the policy's reference does (`testbed policies`)
    datapath_notes: ClassVar[dict[str, str]] = {}

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def queue_config(self) -> QueueConfig:
        return QueueConfig()

    def update(self, state: QueueState) -> Decision:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_dequeue(self, cls: str, sojourn_s: float, now: float, backlog_bytes: int) -> Action:
        """Per-packet hook at dequeue (only nfqueue calls it). Default: follow the decision.

        `sojourn_s` is this packet's time in the queue, `now` the dequeue time (seconds, any
        fixed origin), `backlog_bytes` what is still queued after this packet left (RFC 8289's
        bytes()). A policy returning DROP gets the next head packet in a following call.
        """
        return Action.ENQUEUE
