"""A testbed's topology from its spec: interfaces and addresses per link, the bottleneck, and
static routes through any tree of routers. Pure data: every provider builds from it."""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable

from orchestrator.spec.schema import Spec
from orchestrator.testbed.base import Bottleneck, Host, Interface

IfaceName = Callable[[str, str], str]


def plan(spec: Spec, iface_name: IfaceName, delay_mode: str) -> tuple[dict[str, Host], Bottleneck]:
    """Hosts with their interfaces and addresses, and the bottleneck, without touching the
    kernel. `iface_name(host, peer)` names the interface of `host` towards `peer` (the
    provider knows: made-up veth names, or a real machine's); `delay_mode` is the provider's
    answer to the spec's `auto`."""
    hosts = {h.name: Host(h.name, h.role) for h in spec.hosts}
    used = [ipaddress.IPv4Interface(a).network for link_ in spec.links
            for a in (link_.a_addr, link_.b_addr) if a]
    # automatic subnets skip any that overlap one given in the file (a given 10.0.0.0/16 too)
    auto = (f"10.{i // 250}.{i % 250 + 1}.0/24" for i in range(1 << 14)
            if not any(ipaddress.IPv4Network(f"10.{i // 250}.{i % 250 + 1}.0/24").overlaps(u)
                       for u in used))
    for idx, lk in enumerate(spec.links):
        a_addr, b_addr = lk.a_addr, lk.b_addr
        if a_addr is None:
            net = next(auto)
            base = net.rsplit(".", 1)[0]
            a_addr, b_addr = f"{base}.1/24", f"{base}.2/24"
        assert b_addr is not None
        hosts[lk.a].interfaces.append(Interface(iface_name(lk.a, lk.b), a_addr, lk.b, b_addr, idx))
        hosts[lk.b].interfaces.append(Interface(iface_name(lk.b, lk.a), b_addr, lk.a, a_addr, idx))
    bl, bn = spec.bottleneck_link, spec.bottleneck
    router = hosts[bl.a]
    extra = {}
    for lk in spec.links:
        if lk.delay_s > 0:
            for end in (lk.a, lk.b):
                if hosts[end].role != "router":
                    extra[hosts[end].address] = lk.delay_s
    bottleneck = Bottleneck(
        router=router.name, egress=router.iface_to(bl.b).name,
        ingress=[i.name for i in router.interfaces if i.peer != bl.b],
        rate_bps=bn.rate_bps, forward_delay_s=bn.forward_s, reverse_delay_s=bn.reverse_s,
        buffer_pkts=bn.buffer_pkts(), buffer_bytes=bn.buffer_bytes(), delay_mode=delay_mode,
        extra_delay_s=extra, buffer_in="packets" if _in_packets(bn.buffer) else "bytes")
    return hosts, bottleneck


def _in_packets(buffer: str | int) -> bool:
    return isinstance(buffer, int) or buffer.strip().lower().endswith(("p", "pkts", "packets"))


def routes(spec: Spec, hosts: dict[str, Host]) -> dict[str, list[tuple[str, str]]]:
    """Per host, (subnet, next-hop address) for every subnet not directly attached (BFS)."""
    adj: dict[str, list[Interface]] = {n: h.interfaces for n, h in hosts.items()}
    out: dict[str, list[tuple[str, str]]] = {}
    for name, host in hosts.items():
        first_hop: dict[str, Interface] = {}
        seen, todo = {name}, deque()
        for iface in adj[name]:
            if iface.peer not in seen:
                seen.add(iface.peer)
                first_hop[iface.peer] = iface
                todo.append(iface.peer)
        while todo:
            node = todo.popleft()
            for iface in adj[node]:
                if iface.peer not in seen and hosts[node].role == "router":
                    seen.add(iface.peer)
                    first_hop[iface.peer] = first_hop[node]
                    todo.append(iface.peer)
        direct = {str(ipaddress.IPv4Interface(i.address).network) for i in host.interfaces}
        rts: dict[str, str] = {}
        for node, hop in first_hop.items():
            for iface in hosts[node].interfaces:
                net = str(ipaddress.IPv4Interface(iface.address).network)
                if net not in direct and net not in rts:
                    rts[net] = hop.peer_ip
        out[name] = sorted(rts.items())
    return out
