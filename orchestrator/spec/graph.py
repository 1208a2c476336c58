"""Checks of a testbed spec as a whole: addresses, the shape of the host graph, SSH settings.

Each raises a SpecError naming the file and key; schema.check calls them in order.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from orchestrator.errors import SpecError

# a schema.Spec; not imported, since schema imports this module
Spec = Any


def check_addresses(spec: Spec) -> None:
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


def check_tree(spec: Spec) -> None:
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


def check_ssh(spec: Spec) -> None:
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


def check_connected(spec: Spec) -> None:
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
