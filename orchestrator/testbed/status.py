"""What `testbed status` shows: a testbed's hosts, links, bottleneck and live processes."""

from __future__ import annotations

import os
from typing import Any

from orchestrator.testbed.base import Testbed


def describe(tb: Testbed) -> dict[str, Any]:
    bn = tb.bottleneck
    links = []
    seen = set()
    for host in tb.hosts.values():
        for iface in host.interfaces:
            if iface.link in seen:
                continue
            seen.add(iface.link)
            links.append({"a": host.name, "a_iface": iface.name, "a_addr": iface.address,
                          "b": iface.peer, "b_addr": iface.peer_address,
                          "bottleneck": host.name == bn.router and iface.name == bn.egress})
    return {
        "name": tb.name, "provider": tb.provider, "status": tb.status,
        "hosts": [{"name": h.name, "role": h.role, "where": tb.location(h.name),
                   "addresses": [i.address for i in h.interfaces]} for h in tb.hosts.values()],
        "links": links,
        "bottleneck": {"router": bn.router, "egress": bn.egress, "rate_mbps": bn.rate_bps / 1e6,
                       "rtt_ms": bn.rtt_s * 1e3, "buffer_pkts": bn.buffer_pkts,
                       "buffer_bytes": bn.buffer_bytes, "delay_mode": bn.delay_mode},
        "processes": [{"host": p.host, "pid": p.pid, "tag": p.tag, "alive": _alive(p.pid),
                       "argv": p.argv} for p in tb.processes],
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
