"""A flow plan: every flow checked against the testbed and resolved (tool, addresses, ports,
times), before any traffic starts. Every error names the flow and the key at fault."""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass, field

from orchestrator.errors import UserError
from orchestrator.spec import units
from orchestrator.spec.scenario import FlowSpec
from orchestrator.testbed.base import Testbed
from orchestrator.workloads import l4s

TOOLS = {"tcp": "iperf3", "l4s": "tcp_sender", "udp": "udp_cbr", "scapy": "scapy_sender"}
ECN_VALUE = {"not-ect": 0, "ect1": 1, "ect0": 2, "ce": 3}
FIRST_DPORT = 5201
SPORT_RANGE = (10000, 30000)  # below the ephemeral range, so no socket of the host takes it
SCAPY_SPORT = 40000  # crafted packets bind no port; short-flows count up from here


@dataclass
class FlowPlan:
    spec: FlowSpec
    index: int
    tool: str
    src_ip: str
    dst_ip: str
    sport: int
    dport: int
    start_s: float  # offset from the scenario's start
    duration_s: float | None  # None: a size-bound flow, capped at the scenario's end
    cc: str | None = None  # tcp: as asked (None: the host's); l4s: 'prague'/'scalable', then the name
    ecn: str = "not-ect"  # the codepoint the flow's data carry, as configured
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def proto(self) -> str:
        return "udp" if self.spec.kind in ("udp", "scapy") else "tcp"


def flow_error(flow: FlowSpec, index: int, key: str, message: str) -> UserError:
    return UserError(f"flow {flow.name!r} (flows[{index}]) {key}: {message}")


def make(testbed: Testbed, flows: list[FlowSpec], duration_s: float) -> list[FlowPlan]:
    """Check every flow and resolve it; raise UserError for the first bad one."""
    if not flows:
        raise UserError("no flows to run")
    probe = _Probe(testbed)
    seen: set[str] = set()
    base = random.randrange(*SPORT_RANGE) // 100 * 100  # fresh 4-tuples on every run
    plans = []
    for i, flow in enumerate(flows):
        if flow.name in seen:
            raise flow_error(flow, i, "name", "duplicate flow name")
        seen.add(flow.name)
        _check_hosts(testbed, flow, i)
        _check_kind(probe, flow, i)
        start, dur = _times(flow, i, duration_s)
        sport = SCAPY_SPORT + i * 1000 if flow.kind == "scapy" else base + i
        plans.append(FlowPlan(flow, i, TOOLS[flow.kind], testbed.host(flow.src).address,
                              testbed.host(flow.dst).address, sport, FIRST_DPORT + i, start, dur,
                              flow.cc, _ecn(flow)))
    _check_tcp_ecn(plans)
    return plans


def validate(testbed: Testbed, flows: list[FlowSpec], duration_s: float | None = None) -> None:
    make(testbed, flows, duration_s if duration_s is not None else scenario_end(flows))


def scenario_end(flows: list[FlowSpec]) -> float:
    """Without a scenario duration: the last scheduled end (every flow then needs a duration)."""
    ends = []
    for i, f in enumerate(flows):
        if f.duration is None:
            raise flow_error(f, i, "duration", "needs a duration when no scenario duration is given")
        ends.append(f.start_s + units.seconds(f.duration))
    return max(ends, default=0.0)


def _check_hosts(testbed: Testbed, flow: FlowSpec, i: int) -> None:
    for key in ("src", "dst"):
        name = getattr(flow, key)
        if name not in testbed.hosts:
            raise flow_error(flow, i, key, f"unknown host {name!r} (hosts of testbed "
                             f"{testbed.name!r}: {', '.join(sorted(testbed.hosts))})")
        if testbed.hosts[name].role == "router":
            raise flow_error(flow, i, key, f"{name!r} is the router; flows run between senders "
                             "and receivers")
    if flow.src == flow.dst:
        raise flow_error(flow, i, "dst", "src and dst are the same host")


def _check_kind(probe: _Probe, flow: FlowSpec, i: int) -> None:
    kind, ecn = flow.kind, flow.ecn
    if kind == "tcp":
        if ecn not in (None, "not-ect", "ect0"):
            raise flow_error(flow, i, "ecn", f"a classic tcp flow sends Not-ECT or ECT(0), not {ecn!r} "
                             "(ECT(1) is kind l4s; CE can be sent by udp or scapy flows)")
        for end in (flow.src, flow.dst):
            probe.need_iperf3(flow, i, end)
            if flow.cc is not None:
                probe.need_cc(flow, i, end, flow.cc)
    elif kind == "l4s":
        if ecn not in (None, "ect1"):
            raise flow_error(flow, i, "ecn", f"an l4s flow sends ECT(1), not {ecn!r}")
        why = l4s.unavailable(probe.testbed, flow.src, flow.cc)
        if why:
            raise flow_error(flow, i, "cc" if flow.cc else "kind", why)
    else:
        if flow.cc is not None:
            raise flow_error(flow, i, "cc", f"a {kind} flow has no congestion control; drop 'cc'")
        if kind == "scapy":
            if importlib.util.find_spec("scapy") is None:
                raise flow_error(flow, i, "kind", "scapy flows need the scapy package (pip install scapy)")
            if flow.pattern == "mixed-ecn" and ecn is not None:
                raise flow_error(flow, i, "ecn", "the mixed-ecn pattern cycles through every codepoint; "
                                 "drop 'ecn'")


def _times(flow: FlowSpec, i: int, duration_s: float) -> tuple[float, float | None]:
    start = flow.start_s
    if start >= duration_s:
        raise flow_error(flow, i, "start", f"starts at {start:g}s but the scenario lasts {duration_s:g}s")
    if flow.size is not None and flow.duration is None:
        return start, None
    dur = flow.duration_s(duration_s)
    if start + dur > duration_s + 1e-9:
        raise flow_error(flow, i, "duration", f"runs until {start + dur:g}s but the scenario lasts "
                         f"{duration_s:g}s")
    if dur <= 0:
        raise flow_error(flow, i, "duration", "must be positive")
    return start, dur


def _ecn(flow: FlowSpec) -> str:
    if flow.kind == "l4s":
        return "ect1"
    if flow.kind == "scapy" and flow.pattern == "mixed-ecn":
        return "mixed"
    return flow.ecn or "not-ect"


def _check_tcp_ecn(plans: list[FlowPlan]) -> None:
    """iperf3 gets classic ECN only from the sender namespace's tcp_ecn, one value per host."""
    wants: dict[str, tuple[str, FlowPlan]] = {}
    for p in plans:
        if p.spec.kind != "tcp" or p.spec.ecn is None:
            continue
        prev = wants.setdefault(p.spec.src, (p.ecn, p))
        if prev[0] != p.ecn:
            raise flow_error(p.spec, p.index, "ecn", f"host {p.spec.src!r} also sends flow "
                             f"{prev[1].name!r} with ecn {prev[0]!r}; classic ECN is set per host "
                             "(net.ipv4.tcp_ecn), so its tcp flows must agree")


class _Probe:
    """Asks hosts what they have, once per (host, question)."""

    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        self.ccs: dict[str, list[str]] = {}
        self.iperf3: dict[str, bool] = {}

    def need_cc(self, flow: FlowSpec, i: int, host: str, cc: str) -> None:
        if host not in self.ccs:
            self.ccs[host] = l4s.available_ccs(self.testbed, host)
        if cc in self.ccs[host]:
            return
        loadable = self.testbed.run(host, ["modinfo", "-F", "name", f"tcp_{cc}"], check=False)
        if loadable.returncode != 0:
            raise flow_error(flow, i, "cc", f"congestion control {cc!r} is not available on {host}'s "
                             f"kernel (available: {', '.join(self.ccs[host])})")

    def need_iperf3(self, flow: FlowSpec, i: int, host: str) -> None:
        if host not in self.iperf3:
            res = self.testbed.run(host, ["iperf3", "--version"], check=False)
            self.iperf3[host] = res.returncode == 0
        if not self.iperf3[host]:
            raise flow_error(flow, i, "kind", f"tcp flows run iperf3, which is not installed on {host}")
