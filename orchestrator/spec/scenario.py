"""A scenario is data: the flows to drive through the testbed, and when.

It lives under `scenario:` in a testbed file or in a file of its own (`--scenario FILE`).
The workloads package interprets it; nothing here starts a process.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator, model_validator

from orchestrator.errors import SpecError
from orchestrator.spec import units
from orchestrator.spec.load import read_yaml, validate
from orchestrator.spec.prague import PragueOptions

# a day: longer runs are a typo (or 'inf'), and the pcaps of one would fill any disk
MAX_DURATION_S = 86400.0
FLOW_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,23}$")
ECN = Literal["not-ect", "ect0", "ect1", "ce"]


class FlowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["tcp", "l4s", "udp", "scapy"]
    src: str
    dst: str
    cc: str | None = None  # tcp: cubic/reno/bbr (default: the host's); l4s: prague or scalable
    ecn: ECN | None = None  # udp/scapy: codepoint sent; tcp: ect0 turns classic ECN on
    start: str = "0s"
    duration: str | None = None  # default: until the scenario ends
    size: str | None = None  # tcp/l4s: bytes to send instead of a duration
    rate: str | None = None  # udp: constant bit rate; scapy: packets are paced to it
    packet_size: int = 1200  # udp/scapy payload bytes
    pattern: Literal["burst", "short-flows", "mixed-ecn"] = "burst"  # scapy
    prague: dict[str, Any] | None = None  # l4s: TCP Prague options (workloads/prague.py)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not FLOW_NAME.match(v):
            raise ValueError(f"expected a flow name of lowercase letters, digits, '-' or '_', got {v!r}")
        return v

    _time_unit = field_validator("start", "duration", mode="before")(units.needs_unit("2s"))
    _rate_unit = field_validator("rate", "size", mode="before")(units.needs_unit("10mbit"))

    @field_validator("start", "duration")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and units.seconds(v) > MAX_DURATION_S:
            raise ValueError(f"expected a time of at most {MAX_DURATION_S:g}s, got {v!r}")
        return v

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is not None:
            units.bounded_rate(v)
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and units.size_bytes(v) <= 0:
            raise ValueError(f"expected a positive size like '10mb', got {v!r}")
        return v

    @field_validator("packet_size")
    @classmethod
    def _packet_size(cls, v: int) -> int:
        if not 16 <= v <= 1472:
            raise ValueError(f"expected a payload size between 16 and 1472 bytes, got {v}")
        return v

    @model_validator(mode="after")
    def _kind_needs(self) -> FlowSpec:
        if self.kind == "udp" and self.rate is None:
            raise ValueError("a udp flow needs a 'rate', like '10mbit'")
        if self.kind in ("udp", "scapy") and self.size is not None:
            raise ValueError(f"a {self.kind} flow takes 'duration', not 'size'")
        if self.prague is not None:
            if self.kind != "l4s" or self.cc == "prague":
                raise ValueError("'prague' options are for an l4s flow on the BPF congestion "
                                 "control (the kernel's Prague has its own module parameters)")
            PragueOptions.model_validate(self.prague)
        return self

    @property
    def start_s(self) -> float:
        return units.seconds(self.start)

    def duration_s(self, scenario_duration_s: float) -> float:
        if self.duration is not None:
            return units.seconds(self.duration)
        return max(scenario_duration_s - self.start_s, 0.0)

    @property
    def rate_bps(self) -> float | None:
        return units.rate_bps(self.rate) if self.rate is not None else None


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""  # for pools and evaluations that hold scenarios out
    duration: str = "10s"
    flows: list[FlowSpec]
    # optional defaults for `testbed run`; the command line wins
    policy: str | None = None
    datapath: str | None = None
    policy_args: dict[str, Any] = {}
    # lists of values to sweep: keys 'policy', 'rate', 'rtt', 'buffer', 'datapath', and 'link'
    # (link mappings, like `link:` below: schedules, traces, loss)
    sweep: dict[str, list[Any]] = {}
    # the bottleneck for this scenario's runs, over the testbed file's: rate (or a schedule),
    # trace, rtt (or a schedule), buffer, loss (spec/dynamic.py); restored after the run
    link: dict[str, Any] | None = None
    _source: str = PrivateAttr("")  # the file it came from, for errors found at run time

    _duration_unit = field_validator("duration", mode="before")(units.needs_unit("10s"))

    @field_validator("flows")
    @classmethod
    def _some_flows(cls, v: list[FlowSpec]) -> list[FlowSpec]:
        if not v:
            raise ValueError("expected at least one flow")
        return v

    @field_validator("policy_args")
    @classmethod
    def _scalar_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        # each value becomes one --policy-arg: a list or a mapping has no meaning there
        for key, value in v.items():
            if not isinstance(value, str | int | float | bool):
                raise ValueError(f"expected a number, a string or a boolean for {key!r}, "
                                 f"got {value!r}")
        return v

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: str) -> str:
        if not 0 < units.seconds(v) <= MAX_DURATION_S:
            raise ValueError(f"expected a duration from 0 to {MAX_DURATION_S:g}s like '10s', "
                             f"got {v!r}")
        return v

    @property
    def duration_s(self) -> float:
        return units.seconds(self.duration)

    def check(self, roles: dict[str, str], source: str, prefix: str = "scenario.") -> None:
        """Cross-checks against the testbed: `roles` is each host's role (Spec.roles)."""
        if self.link is not None:
            from pathlib import Path

            from orchestrator.spec.dynamic import check_mapping

            check_mapping(self.link, Path(source).parent, source, f"{prefix}link.")
        names = roles
        seen: set[str] = set()
        for i, flow in enumerate(self.flows):
            path = f"{prefix}flows[{i}]"
            if flow.name in seen:
                raise SpecError(source, f"{path}.name", f"duplicate flow name {flow.name!r}")
            seen.add(flow.name)
            for end in ("src", "dst"):
                host = getattr(flow, end)
                if host not in names:
                    raise SpecError(source, f"{path}.{end}",
                                    f"unknown host {host!r} (expected one of: {', '.join(sorted(names))})")
                if names[host] == "router":
                    raise SpecError(source, f"{path}.{end}",
                                    f"host {host!r} is a router; flows run between senders and receivers")
            if flow.src == flow.dst:
                raise SpecError(source, path, "src and dst must be different hosts")
            if flow.start_s >= self.duration_s:
                raise SpecError(source, f"{path}.start",
                                f"starts at {flow.start} but the scenario lasts {self.duration}")
        self._check_policy(source, prefix)
        for key, values in self.sweep.items():
            # a host's access-link delay (bottleneck/access_delay.py)
            if key.startswith("delay."):
                if key[6:] not in names or names[key[6:]] == "router":
                    raise SpecError(source, f"{prefix}sweep.{key}",
                                    f"expected delay.<sender or receiver>, got unknown host {key[6:]!r}")
            elif key not in SWEEP_CHECKS and key != "link":
                raise SpecError(source, f"{prefix}sweep.{key}", "unknown sweep key (expected policy, rate, "
                                "rtt, buffer, datapath, link or delay.<host>)")
            if not values:
                raise SpecError(source, f"{prefix}sweep.{key}", "expected a non-empty list")
            if key == "link":
                from pathlib import Path

                from orchestrator.spec.dynamic import check_mapping

                for j, value in enumerate(values):
                    check_mapping(value, Path(source).parent, source, f"{prefix}sweep.link[{j}].")
                continue
            for j, value in enumerate(values):
                try:
                    SWEEP_CHECKS.get(key, _check_delay)(value)
                except ValueError as e:
                    raise SpecError(source, f"{prefix}sweep.{key}[{j}]", str(e)) from None


    def _check_policy(self, source: str, prefix: str) -> None:
        """The scenario's own policy and policy_args, now and naming this file: at run time the
        same error would not say where the bad value came from."""
        import policies
        from policies.errors import ParamError, PolicyError

        swept = self.sweep.get("policy")
        for j, name in enumerate(swept if isinstance(swept, list) else []):
            if isinstance(name, str):
                try:
                    policies.resolve(name)
                except (ParamError, PolicyError) as e:
                    raise SpecError(source, f"{prefix}sweep.policy[{j}]", str(e)) from None
        if self.policy is None:
            return
        try:
            cls = policies.resolve(self.policy)
        except (ParamError, PolicyError) as e:
            raise SpecError(source, f"{prefix}policy", str(e)) from None
        text = {k: str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, int | float)
                else v for k, v in self.policy_args.items()}
        try:
            cls.Params.from_args(text)
        except (ParamError, PolicyError) as e:
            raise SpecError(source, f"{prefix}policy_args", str(e)) from None


def _check_delay(value: Any) -> None:
    units.bounded_delay(value)


def _check_name(value: Any) -> None:
    if not isinstance(value, str) or not re.match(r"^[a-z][a-z0-9-]*$", value):
        raise ValueError(f"expected a name like 'dualpi2', got {value!r}")


def _check_buffer(value: Any) -> None:
    units.buffer_size(value, 1e6, 0.02)


SWEEP_CHECKS = {"policy": _check_name, "datapath": _check_name, "buffer": _check_buffer,
                "rate": units.bounded_rate, "rtt": units.bounded_delay}


def load(path: str, roles: dict[str, str]) -> Scenario:
    """The scenario from FILE (a file with a `scenario:` key, or the scenario itself), checked
    against the testbed's hosts (`roles`: Spec.roles)."""
    data, prefix = read_yaml(path), ""
    if isinstance(data, dict) and "scenario" in data:
        data, prefix = data["scenario"], "scenario."
    if not isinstance(data, dict):
        raise SpecError(path, prefix.rstrip("."), "expected a mapping with 'flows'")
    data = absolute_traces(data, Path(path).parent)
    scenario = validate(Scenario, data, path, prefix)
    scenario.check(roles, path, prefix)
    scenario._source = path
    return scenario


def absolute_traces(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A trace in `link:` or in `sweep.link` is named relative to the scenario's file: make it
    absolute, so the scenario means the same in a sweep file or a manifest."""
    from orchestrator.spec.dynamic import with_absolute_trace

    if "link" in data:
        data = {**data, "link": with_absolute_trace(data["link"], base)}
    sweep = data.get("sweep")
    if isinstance(sweep, dict) and isinstance(sweep.get("link"), list):
        data = {**data, "sweep": {**sweep, "link": [with_absolute_trace(v, base) for v in sweep["link"]]}}
    return data
