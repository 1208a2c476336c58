"""The testbed spec: YAML validated into typed objects.

Every error names the file, the key path (``links[2].b``) and what was expected.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator import units
from orchestrator.errors import SpecError
from orchestrator.names import HOST_NAME, TESTBED_NAME
from orchestrator.scenario import Scenario

# Names reach the kernel (namespace and interface names), so they are restricted to a safe,
# short alphabet: interface names are at most 15 bytes.
CC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
# Values that reach an ssh or ansible command line: no leading '-' (option injection), no
# whitespace, quotes or '%' (ssh expands %-tokens and splits some option values on spaces).
SSH_ADDRESS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,252}$")
SSH_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
IFACE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,14}$")
SAFE_PATH = re.compile(r"^[^\s'\"%\\]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TcpSettings(_Strict):
    cc: str = Field("cubic", description="congestion control for this host's sockets")
    ecn: Literal[0, 1, 2] = Field(2, description="net.ipv4.tcp_ecn: 0 off, 1 request, 2 accept")

    @field_validator("cc")
    @classmethod
    def _cc_name(cls, v: str) -> str:
        if not CC_NAME.fullmatch(v):
            raise ValueError(f"expected a congestion control name like 'cubic', got {v!r}")
        return v


def _safe_path(v: str | None) -> str | None:
    if v is not None and (not SAFE_PATH.fullmatch(v) or v.startswith("-")):
        raise ValueError(f"expected a path without spaces, quotes or '%', got {v!r}")
    return v


class SshHost(_Strict):
    """An existing machine (provider: ssh): how to reach it and which interfaces to use."""

    address: str = Field(description="IP address or DNS name the controller reaches it at")
    user: str | None = None  # default: ssh.user
    port: int | None = None  # default: ssh.port
    key_file: str | None = None  # a path; default: ssh.key_file, else ssh-agent
    os: Literal["linux", "freebsd"] = "linux"
    # peer host name -> the interface on this host that links to it
    interfaces: dict[str, str] = {}
    python: str | None = None  # the interpreter Ansible uses there (default: discovered)
    # routers only: the bottleneck's queue discipline set up at `up` (see playbooks/README.md)
    aqm: str | None = None
    aqm_args: dict[str, str | int | float | bool] = {}

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not SSH_ADDRESS.fullmatch(v):
            raise ValueError(f"expected an IP address or host name, got {v!r}")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not SSH_USER.fullmatch(v):
            raise ValueError(f"expected a user name like 'root', got {v!r}")
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 65535:
            raise ValueError(f"expected a port between 1 and 65535, got {v}")
        return v

    @field_validator("key_file", "python")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return _safe_path(v)

    @field_validator("interfaces")
    @classmethod
    def _interfaces(cls, v: dict[str, str]) -> dict[str, str]:
        for peer, name in v.items():
            if not IFACE_NAME.fullmatch(name):
                raise ValueError(f"expected an interface name like 'eth1' for {peer!r}, got {name!r}")
        return v

    @field_validator("aqm")
    @classmethod
    def _aqm(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z][a-z0-9_]{0,15}", v):
            raise ValueError(f"expected a queue discipline name like 'fq_codel', got {v!r}")
        return v


class SshSettings(_Strict):
    """Settings shared by every host of an ssh testbed (top-level `ssh:`)."""

    user: str = "root"
    port: int = 22
    key_file: str | None = None  # a path to a private key; never the key itself
    known_hosts: str = "~/.ssh/known_hosts"
    # Host keys are verified against known_hosts. Only for throwaway labs: accept any key.
    insecure_ignore_host_keys: bool = False
    connect_timeout: str = "5s"
    remote_dir: str = "/var/tmp/l4s-testbed"  # where hosts keep state, pids and outputs
    # The project on the hosts (routers run its delay line and datapaths). Default: the same
    # path and interpreter as on the controller.
    project_dir: str | None = None
    project_python: str | None = None
    install_project: bool = False  # copy this checkout to project_dir and make a venv there
    install_packages: bool = False  # install missing iperf3/tcpdump/ethtool with the OS's tool

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not SSH_USER.fullmatch(v):
            raise ValueError(f"expected a user name like 'root', got {v!r}")
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError(f"expected a port between 1 and 65535, got {v}")
        return v

    @field_validator("key_file", "known_hosts", "remote_dir", "project_dir", "project_python")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return _safe_path(v)

    @field_validator("connect_timeout")
    @classmethod
    def _timeout(cls, v: str) -> str:
        if units.seconds(v) <= 0:
            raise ValueError(f"expected a positive time like '5s', got {v!r}")
        return v

    @property
    def connect_timeout_s(self) -> float:
        return units.seconds(self.connect_timeout)


class HostSpec(_Strict):
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


class DelaySpec(_Strict):
    forward: str = "0ms"  # sender -> receiver, before the bottleneck queue
    reverse: str = "0ms"  # receiver -> sender (the ACK path)

    @field_validator("forward", "reverse")
    @classmethod
    def _time(cls, v: str) -> str:
        if units.seconds(v) < 0:
            raise ValueError(f"expected a non-negative time, got {v!r}")
        return v


class BottleneckSpec(_Strict):
    # a rate, or a schedule of steps; or `trace: FILE` instead (bottleneck/dynamic.py)
    rate: str | list[Any] | None = None
    trace: str | None = None
    rtt: str | list[Any] | None = None  # a time, or a schedule of steps
    delay: DelaySpec | None = None
    buffer: str | int = "1.5bdp"
    delay_mode: Literal["auto", "netem", "nfqueue"] = "auto"
    loss: str | float | dict[str, Any] | None = None  # random loss (nfqueue datapath)

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | list[Any] | None) -> str | list[Any] | None:
        if isinstance(v, str) and units.rate_bps(v) <= 0:
            raise ValueError(f"expected a positive rate like '50mbit', got {v!r}")
        return v

    @field_validator("rtt")
    @classmethod
    def _rtt(cls, v: str | list[Any] | None) -> str | list[Any] | None:
        if isinstance(v, str) and units.seconds(v) < 0:
            raise ValueError(f"expected a non-negative time like '20ms', got {v!r}")
        return v

    def dynamics(self, source: str = "", prefix: str = "") -> Any:
        """The link's changes during a run (a bottleneck.dynamic.LinkDynamics)."""
        return _dynamics_of(self.model_dump_json(include={"rate", "trace", "rtt", "loss"}), source, prefix)

    @field_validator("buffer")
    @classmethod
    def _buffer(cls, v: str | int) -> str | int:
        _parse_buffer(v, 1e6, 0.02)
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
        return _parse_buffer(self.buffer, self.rate_bps, self.rtt_s, mtu)[1]

    def buffer_pkts(self, mtu: int = 1500) -> int:
        return _parse_buffer(self.buffer, self.rate_bps, self.rtt_s, mtu)[0]


@functools.lru_cache(maxsize=32)
def _dynamics_of(fields_json: str, source: str, prefix: str) -> Any:
    """Parsed once per distinct bottleneck (a trace file is read once, not per property)."""
    import json

    from orchestrator.bottleneck import dynamic

    data = {k: v for k, v in json.loads(fields_json).items() if v is not None}
    return dynamic.parse(data, "/", source, prefix)


def _parse_buffer(v: str | int, rate_bps: float, rtt_s: float, mtu: int = 1500) -> tuple[int, int]:
    """-> (packets, bytes). Accepts 1000 (packets), '1000p', '300kb', '1.5bdp'."""
    if isinstance(v, bool):
        raise ValueError(f"expected a buffer like 1000, '300kb' or '1.5bdp', got {v!r}")
    if isinstance(v, int):
        if v <= 0:
            raise ValueError(f"expected a positive number of packets, got {v}")
        return v, v * mtu
    text = v.strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(bdp|p|pkts|packets)", text)
    if m:
        n = float(m.group(1))
        if n <= 0:
            raise ValueError(f"expected a positive buffer, got {v!r}")
        if m.group(2) == "bdp":
            nbytes = max(int(n * rate_bps * rtt_s / 8), 2 * mtu)
            return max(nbytes // mtu, 2), nbytes
        return int(n), int(n) * mtu
    try:
        nbytes = int(units.size_bytes(text))
    except ValueError:
        raise ValueError(f"expected a buffer like 1000, '1000p', '300kb' or '1.5bdp', "
                         f"got {v!r}") from None
    if nbytes <= 0:
        raise ValueError(f"expected a positive buffer, got {v!r}")
    return max(nbytes // mtu, 1), nbytes


class LinkSpec(_Strict):
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
            if iface.network.prefixlen > 30:
                raise ValueError(f"expected a prefix of /30 or shorter, got {v!r}")
        return v

    @field_validator("delay")
    @classmethod
    def _delay(cls, v: str) -> str:
        if units.seconds(v) < 0:
            raise ValueError(f"expected a non-negative time, got {v!r}")
        return v

    @property
    def delay_s(self) -> float:
        return units.seconds(self.delay)


class Spec(_Strict):
    name: str
    hosts: list[HostSpec]
    links: list[LinkSpec]
    scenario: Scenario | None = None
    # netns: namespaces on this machine; ssh: existing machines, set up with Ansible
    provider: Literal["netns", "ssh"] = "netns"
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

    def hosts_with_role(self, role: str) -> list[HostSpec]:
        return [h for h in self.hosts if h.role == role]


def load(path: str | Path) -> Spec:
    """Read and validate a testbed file. Raises SpecError for anything wrong with it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), "", "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), "", f"cannot read the file: {e}") from None
    return parse(text, str(path))


def parse(text: str, source: str = "<string>") -> Spec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise SpecError(source, where, f"not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise SpecError(source, "", "expected a mapping with keys name, hosts, links")
    data = _absolute_traces(data, Path(source).parent)
    try:
        spec = Spec.model_validate({**data, "source": source})
    except ValidationError as e:
        err = e.errors()[0]
        raise SpecError(source, key_path(err["loc"]), _message(err)) from None
    check(spec)
    return spec


def _absolute_traces(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Trace files are named relative to the file: make them absolute, so the spec means the
    same when it is read back from the state file or a manifest."""
    from orchestrator.bottleneck.dynamic import with_absolute_trace

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


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[", "str", "int")):
            out += ("." if out else "") + str(part)
    return out


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "extra_forbidden":
        return "unknown key"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


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
    from orchestrator.bottleneck import dynamic

    dynamic.check_mapping(bn.model_dump(include={"rate", "trace", "rtt", "loss"}, exclude_none=True),
                          Path(src).parent, src, f"links[{bi}].bottleneck.")
    _check_addresses(spec)
    _check_connected(spec)
    _check_ssh(spec)
    if spec.scenario is not None:
        spec.scenario.check(spec, src)


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
        key = str(a.network)
        if key in nets:
            raise SpecError(spec.source, f"links[{i}].a_addr",
                            f"subnet {key} is already used by {nets[key]}")
        nets[key] = f"links[{i}]"


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
