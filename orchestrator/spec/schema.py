"""The testbed spec: YAML validated into typed objects.

Every error names the file, the key path (``links[2].b``) and what was expected.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from orchestrator.errors import SpecError
from orchestrator.spec import units
from orchestrator.spec.load import load_model, parse_yaml, validate
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
    rate: str
    rtt: str | None = None
    delay: DelaySpec | None = None
    buffer: str | int = "1.5bdp"
    delay_mode: Literal["auto", "netem", "nfqueue"] = "auto"

    _rate_unit = field_validator("rate", mode="before")(units.needs_unit("50mbit"))
    _rtt_unit = field_validator("rtt", mode="before")(units.needs_unit("20ms"))

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str) -> str:
        units.bounded_rate(v)
        return v

    @field_validator("rtt")
    @classmethod
    def _rtt(cls, v: str | None) -> str | None:
        # rtt: 0ms means no added delay (the base RTT is then the veths' few microseconds)
        if v is not None:
            units.bounded_delay(v)
        return v

    @field_validator("buffer", mode="before")
    @classmethod
    def _not_bool(cls, v: object) -> object:
        # pydantic would take `buffer: true` as 1 packet
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise ValueError(f"expected a buffer like 1000, '300kb' or '1.5bdp', got {v!r}")
        return v

    @field_validator("buffer")
    @classmethod
    def _buffer(cls, v: str | int) -> str | int:
        units.buffer_size(v, 1e6, 0.02)
        return v

    @property
    def rate_bps(self) -> float:
        return units.rate_bps(self.rate)

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
        return units.seconds(self.rtt) if self.rtt is not None else 0.0

    @property
    def rtt_s(self) -> float:
        return self.forward_s + self.reverse_s

    def buffer_bytes(self, mtu: int = 1500) -> int:
        return units.buffer_size(self.buffer, self.rate_bps, self.rtt_s, mtu)[1]

    def buffer_pkts(self, mtu: int = 1500) -> int:
        return units.buffer_size(self.buffer, self.rate_bps, self.rtt_s, mtu)[0]


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
    return _checked(load_model(path, Spec, source_key="source",
                               what="a mapping with keys name, hosts, links"))


def parse(text: str, source: str = "<string>") -> Spec:
    data = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError(source, "", "expected a mapping with keys name, hosts, links")
    return _checked(validate(Spec, {**data, "source": source}, source))


def _checked(spec: Spec) -> Spec:
    check(spec)
    return spec


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
    try:
        units.buffer_size(bn.buffer, bn.rate_bps, bn.rtt_s)
    except ValueError as e:
        raise SpecError(src, f"links[{bi}].bottleneck.buffer", str(e)) from None
    _check_addresses(spec)
    _check_connected(spec)
    _check_tree(spec)
    _check_ssh(spec)
    if spec.scenario is not None:
        spec.scenario.check(spec.roles(), src)


def _check_addresses(spec: Spec) -> None:
    nets: dict[str, str] = {}
    for i, link in enumerate(spec.links):
        if (link.a_addr is None) != (link.b_addr is None):
            raise SpecError(spec.source, f"links[{i}]", "give both a_addr and b_addr, or neither")
        if link.a_addr is None:
            continue
        a, b = ipaddress.IPv4Interface(link.a_addr), ipaddress.IPv4Interface(link.b_addr)
        if a.network != b.network or a.ip == b.ip:
            raise SpecError(spec.source, f"links[{i}].b_addr",
                            "expected a different address in the same subnet as a_addr")
        for other, where in nets.items():
            if a.network.overlaps(ipaddress.IPv4Network(other)):
                raise SpecError(spec.source, f"links[{i}].a_addr",
                                f"subnet {a.network} overlaps {other} of {where}")
        nets[str(a.network)] = f"links[{i}]"


def _check_tree(spec: Spec) -> None:
    """The hosts and links form a tree (the README's promise, and what the routes assume: one
    path between two hosts). Connected, so a cycle is any link joining two hosts already
    joined; its index is named."""
    root = {h.name: h.name for h in spec.hosts}

    def find(n: str) -> str:
        while root[n] != n:
            n = root[n]
        return n

    for i, link in enumerate(spec.links):
        ra, rb = find(link.a), find(link.b)
        if ra == rb:
            raise SpecError(spec.source, f"links[{i}]",
                            f"this link closes a cycle ({link.a!r} and {link.b!r} are already "
                            f"connected); expected a tree of hosts and links")
        root[ra] = rb


def _check_ssh(spec: Spec) -> None:
    """provider: ssh needs every host's address and an interface for each of its links."""
    src = spec.source
    if spec.provider != "ssh":
        for i, h in enumerate(spec.hosts):
            if h.ssh is not None:
                raise SpecError(src, f"hosts[{i}].ssh", "ssh settings need 'provider: ssh' at the top")
        if spec.ssh is not None:
            raise SpecError(src, "ssh", "ssh settings need 'provider: ssh' at the top")
        return
    for i, h in enumerate(spec.hosts):
        if h.ssh is None:
            raise SpecError(src, f"hosts[{i}].ssh",
                            "required for provider: ssh (expected at least {address: ..., interfaces: ...})")
        peers = [lk.b if lk.a == h.name else lk.a for lk in spec.links if h.name in (lk.a, lk.b)]
        for peer in peers:
            if peer not in h.ssh.interfaces:
                raise SpecError(src, f"hosts[{i}].ssh.interfaces",
                                f"no interface given for the link to {peer!r} "
                                f"(expected e.g. {{{peer}: eth1}})")
        for peer in h.ssh.interfaces:
            if peer not in peers:
                raise SpecError(src, f"hosts[{i}].ssh.interfaces.{peer}",
                                f"{h.name!r} has no link to {peer!r} (links to: {', '.join(peers)})")
        if len(set(h.ssh.interfaces.values())) != len(h.ssh.interfaces):
            raise SpecError(src, f"hosts[{i}].ssh.interfaces", "two links use the same interface")
        if (h.ssh.aqm is not None or h.ssh.aqm_args) and h.role != "router":
            raise SpecError(src, f"hosts[{i}].ssh.aqm", "only a router has a queue discipline")


def _check_connected(spec: Spec) -> None:
    adj: dict[str, set[str]] = {h.name: set() for h in spec.hosts}
    for link in spec.links:
        adj[link.a].add(link.b)
        adj[link.b].add(link.a)
    start = spec.hosts[0].name
    seen, todo = {start}, [start]
    while todo:
        for n in adj[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    missing = [h.name for h in spec.hosts if h.name not in seen]
    if missing:
        raise SpecError(spec.source, "links", f"hosts not connected to the rest: {', '.join(missing)}")
