"""The testbed spec: YAML validated into typed objects.

Every error names the file, the key path (``links[2].b``) and what was expected.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from orchestrator.errors import SpecError
from orchestrator.spec import graph, units
from orchestrator.spec.load import parse_yaml, read_yaml, validate
from orchestrator.spec.names import HOST_NAME, TESTBED_NAME
from orchestrator.spec.scenario import Scenario
from orchestrator.spec.ssh import SshHost, SshSettings, Strict

# Names reach the kernel (namespace and interface names), so they are restricted to a safe,
# short alphabet: interface names are at most 15 bytes.
CC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")

# The providers a testbed file may name, listed once: the registry (orchestrator.providers)
# finds each as the module orchestrator.providers.<name>.
Provider = Literal["netns", "ssh"]


class TcpSettings(Strict):
    cc: str = Field("cubic", description="congestion control for this host's sockets")
    ecn: Literal[0, 1, 2] = Field(2, description="net.ipv4.tcp_ecn: 0 off, 1 request, 2 accept")

    @field_validator("cc")
    @classmethod
    def _cc_name(cls, v: str) -> str:
        if not CC_NAME.fullmatch(v):
            raise ValueError(f"expected a congestion control name like 'cubic', got {v!r}")
        return v


class HostSpec(Strict):
    name: str
    role: Literal["sender", "router", "receiver"]
    tcp: TcpSettings = TcpSettings()
    ssh: SshHost | None = None  # provider: ssh only

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not HOST_NAME.fullmatch(v):
            raise ValueError(
                f"expected a host name of 1-10 lowercase letters and digits starting with a "
                f"letter, got {v!r}")
        return v


class DelaySpec(Strict):
    forward: str = "0ms"  # sender -> receiver, before the bottleneck queue
    reverse: str = "0ms"  # receiver -> sender (the ACK path)

    _numbers = field_validator("forward", "reverse", mode="before")(units.needs_unit("20ms"))

    @field_validator("forward", "reverse")
    @classmethod
    def _time(cls, v: str) -> str:
        units.bounded_delay(v)
        return v


class BottleneckSpec(Strict):
    # a rate, or a schedule of steps; or `trace: FILE` instead (spec/dynamic.py)
    rate: str | list[Any] | None = None
    trace: str | None = None
    rtt: str | list[Any] | None = None  # a time, or a schedule of steps
    delay: DelaySpec | None = None
    buffer: str | int = "1.5bdp"
    delay_mode: Literal["auto", "netem", "nfqueue"] = "auto"
    loss: str | float | dict[str, Any] | None = None  # random loss (nfqueue datapath)

    _rate_unit = field_validator("rate", mode="before")(units.needs_unit("50mbit"))
    _rtt_unit = field_validator("rtt", mode="before")(units.needs_unit("20ms"))

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | list[Any] | None) -> str | list[Any] | None:
        if isinstance(v, str):
            units.bounded_rate(v)
        return v

    @field_validator("rtt")
    @classmethod
    def _rtt(cls, v: str | list[Any] | None) -> str | list[Any] | None:
        # rtt: 0ms means no added delay (the base RTT is then the veths' few microseconds)
        if isinstance(v, str):
            units.bounded_delay(v)
        return v

    @field_validator("buffer", mode="before")
    @classmethod
    def _not_bool(cls, v: object) -> object:
        # pydantic would take `buffer: true` as 1 packet
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise ValueError(f"expected a buffer like 1000, '300kb' or '1.5bdp', got {v!r}")
        return v

    def dynamics(self, source: str = "", prefix: str = "") -> Any:
        """The link's changes during a run (a bottleneck.dynamic.LinkDynamics)."""
        return _dynamics_of(self.model_dump_json(include={"rate", "trace", "rtt", "loss"}), source, prefix)

    @field_validator("buffer")
    @classmethod
    def _buffer(cls, v: str | int) -> str | int:
        units.buffer_size(v, 1e6, 0.02)
        return v

    @property
    def rate_bps(self) -> float:
        """The nominal rate: as given, or a schedule's first value, or a trace's mean."""
        if isinstance(self.rate, str):
            return units.rate_bps(self.rate)
        return self.dynamics().nominal_rate_bps()

    @property
    def forward_s(self) -> float:
        if self.delay is not None:
            return units.seconds(self.delay.forward)
        return 0.0

    @property
    def reverse_s(self) -> float:
        # Whole RTT on the ACK path by default: TCP only sees the RTT, and the ACK path carries
        # fewer packets, which matters for a userspace delay line.
        if self.delay is not None:
            return units.seconds(self.delay.reverse)
        if isinstance(self.rtt, list):  # a schedule: its first value
            return self.dynamics().rtt.initial
        return units.seconds(self.rtt) if self.rtt is not None else 0.0

    @property
    def rtt_s(self) -> float:
        return self.forward_s + self.reverse_s

    def buffer_bytes(self, mtu: int = 1500) -> int:
        return units.buffer_size(self.buffer, self.rate_bps, self.rtt_s, mtu)[1]

    def buffer_pkts(self, mtu: int = 1500) -> int:
        return units.buffer_size(self.buffer, self.rate_bps, self.rtt_s, mtu)[0]


@functools.lru_cache(maxsize=32)
def _dynamics_of(fields_json: str, source: str, prefix: str) -> Any:
    """Parsed once per distinct bottleneck (a trace file is read once, not per property)."""
    import json

    from orchestrator.spec import dynamic

    data = {k: v for k, v in json.loads(fields_json).items() if v is not None}
    return dynamic.parse(data, "/", source, prefix)


class LinkSpec(Strict):
    a: str
    b: str
    a_addr: str | None = None  # CIDR, e.g. 10.0.1.1/24; assigned automatically when absent
    b_addr: str | None = None
    delay: str = "0ms"  # extra one-way delay of this access link, each direction
    bottleneck: BottleneckSpec | None = None

    @field_validator("a_addr", "b_addr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                iface = ipaddress.IPv4Interface(v)
            except ValueError:
                raise ValueError(f"expected an IPv4 address with prefix like '10.0.1.1/24', "
                                 f"got {v!r}") from None
            # /8../30: a /0 would route every address (the host's own network too) into the
            # testbed, and /31 or /32 leave no two host addresses
            if not 8 <= iface.network.prefixlen <= 30:
                raise ValueError(f"expected a prefix from /8 to /30, got {v!r}")
        return v

    _delay_unit = field_validator("delay", mode="before")(units.needs_unit("5ms"))

    @field_validator("delay")
    @classmethod
    def _delay(cls, v: str) -> str:
        units.bounded_delay(v)
        return v

    @property
    def delay_s(self) -> float:
        return units.seconds(self.delay)


class Spec(Strict):
    name: str
    hosts: list[HostSpec]
    links: list[LinkSpec]
    scenario: Scenario | None = None
    # netns: namespaces on this machine; ssh: existing machines, set up with Ansible
    provider: Provider = "netns"
    ssh: SshSettings | None = None
    source: str = ""  # the file it came from (filled in by load)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TESTBED_NAME.fullmatch(v):
            raise ValueError(f"expected a testbed name of 1-10 lowercase letters and digits "
                             f"starting with a letter, got {v!r}")
        return v

    def host(self, name: str) -> HostSpec:
        return next(h for h in self.hosts if h.name == name)

    @property
    def bottleneck_link(self) -> LinkSpec:
        return next(link for link in self.links if link.bottleneck is not None)

    @property
    def bottleneck(self) -> BottleneckSpec:
        bn = self.bottleneck_link.bottleneck
        assert bn is not None
        return bn

    def roles(self) -> dict[str, str]:
        """Host name -> role."""
        return {h.name: h.role for h in self.hosts}

    def hosts_with_role(self, role: str) -> list[HostSpec]:
        return [h for h in self.hosts if h.role == role]


def load(path: str | Path) -> Spec:
    """Read and validate a testbed file. Raises SpecError for anything wrong with it."""
    source = str(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(source, "", "expected a mapping with keys name, hosts, links")
    data = _absolute_traces(data, Path(source).parent)  # traces are named relative to the file
    return _checked(validate(Spec, {**data, "source": source}, source))


def parse(text: str, source: str = "<string>") -> Spec:
    data = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError(source, "", "expected a mapping with keys name, hosts, links")
    data = _absolute_traces(data, Path(source).parent)
    return _checked(validate(Spec, {**data, "source": source}, source))


def _checked(spec: Spec) -> Spec:
    check(spec)
    return spec


def _absolute_traces(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Trace files are named relative to the file: make them absolute, so the spec means the
    same when it is read back from the state file or a manifest."""
    from orchestrator.spec.dynamic import with_absolute_trace

    out = dict(data)
    if isinstance(out.get("links"), list):
        out["links"] = [{**lk, "bottleneck": with_absolute_trace(lk["bottleneck"], base)}
                        if isinstance(lk, dict) and isinstance(lk.get("bottleneck"), dict) else lk
                        for lk in out["links"]]
    scen = out.get("scenario")
    if isinstance(scen, dict) and "link" in scen:
        scen = out["scenario"] = {**scen, "link": with_absolute_trace(scen["link"], base)}
    if isinstance(scen, dict) and isinstance(scen.get("sweep"), dict) and \
            isinstance(scen["sweep"].get("link"), list):
        links = [with_absolute_trace(v, base) for v in scen["sweep"]["link"]]
        out["scenario"] = {**scen, "sweep": {**scen["sweep"], "link": links}}
    return out


def check(spec: Spec) -> None:
    """Cross-field rules pydantic cannot express per field."""
    src = spec.source
    seen: set[str] = set()
    for i, h in enumerate(spec.hosts):
        if h.name in seen:
            raise SpecError(src, f"hosts[{i}].name", f"duplicate host name {h.name!r}")
        seen.add(h.name)
    if not spec.hosts_with_role("router"):
        raise SpecError(src, "hosts", "expected at least one host with role 'router'")
    pairs: set[frozenset[str]] = set()
    for i, link in enumerate(spec.links):
        for end in ("a", "b"):
            name = getattr(link, end)
            if name not in seen:
                raise SpecError(src, f"links[{i}].{end}",
                                f"unknown host {name!r} (expected one of: {', '.join(sorted(seen))})")
        if link.a == link.b:
            raise SpecError(src, f"links[{i}]", f"a link needs two different hosts, got {link.a!r} twice")
        pair = frozenset((link.a, link.b))
        if pair in pairs:
            raise SpecError(src, f"links[{i}]", f"duplicate link between {link.a!r} and {link.b!r}")
        pairs.add(pair)
    bns = [i for i, link in enumerate(spec.links) if link.bottleneck is not None]
    if len(bns) != 1:
        raise SpecError(src, "links", f"expected exactly one link with a 'bottleneck', found {len(bns)}")
    bi = bns[0]
    if spec.host(spec.links[bi].a).role != "router":
        raise SpecError(src, f"links[{bi}].a",
                        "the bottleneck's 'a' end must be a router (it shapes traffic towards 'b')")
    bn = spec.bottleneck
    if bn.rtt is not None and bn.delay is not None:
        raise SpecError(src, f"links[{bi}].bottleneck", "give either 'rtt' or 'delay', not both")
    if bn.rate is None and bn.trace is None:
        raise SpecError(src, f"links[{bi}].bottleneck.rate",
                        "required key is missing (or give 'trace: FILE')")
    from orchestrator.spec import dynamic

    dynamic.check_mapping(bn.model_dump(include={"rate", "trace", "rtt", "loss"}, exclude_none=True),
                          Path(src).parent, src, f"links[{bi}].bottleneck.")
    try:
        units.buffer_size(bn.buffer, bn.rate_bps, bn.rtt_s)
    except ValueError as e:
        raise SpecError(src, f"links[{bi}].bottleneck.buffer", str(e)) from None
    graph.check_addresses(spec)
    graph.check_connected(spec)
    graph.check_tree(spec)
    graph.check_ssh(spec)
    if spec.scenario is not None:
        spec.scenario.check(spec.roles(), src)
