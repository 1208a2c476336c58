"""The kernel state a run's flows need, set up before them and undone after (also on errors):
the scalable congestion control (struct_ops), the ECT(1) rewrite on L4S senders' egress,
the own-CC policy routes on L4S hosts, the pacing ratio on hosts that send with it, and
classic ECN per sender (net.ipv4.tcp_ecn).

Every object is recorded on the testbed as a cleanup before it exists, so `testbed down`
removes it even if this process dies in between.
"""

from __future__ import annotations

import json

from orchestrator.testbed.base import Testbed
from orchestrator.workloads import ccroute, ect1, l4s, prague
from orchestrator.workloads.plan import FlowPlan

TCP_ECN = "net.ipv4.tcp_ecn"
# TCP paces a socket that needs pacing at this percentage of cwnd/srtt once out of slow start.
# Linux's 120% makes each window leave in 5/6 of an RTT, a queue of a sixth of the window at a
# shallow marking step, so the scalable CC was marked below the BDP (40.5-46.1 Mbit/s of 50);
# 100% (as TCP Prague paces) gave 45.9-48.0, same RTT. Per namespace: it touches only paced
# sockets (our CC, SO_MAX_PACING_RATE users; BBR sets its own rate), and is put back after.
PACING_CA_RATIO = ("net.ipv4.tcp_pacing_ca_ratio", "100")


class KernelState:
    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        self.cc: dict[str, l4s.CongestionControl] = {}  # 'prague'/'scalable' -> the registered one
        self.rewrites: list[tuple[str, str]] = []  # (host, iface)
        self.routed: list[str] = []  # hosts with the own-CC policy route
        self.sysctls: list[tuple[str, str, str]] = []  # (host, key, previous value)

    def setup(self, plans: list[FlowPlan]) -> None:
        # the scalable CC is registered once per variant (its Prague options), in the kernel of
        # every host an L4S flow of that variant uses
        scalable = [p for p in plans if p.spec.kind == "l4s"
                    and l4s.choose(self.testbed, p.spec.src, p.spec.cc) == l4s.SCALABLE]
        for bits in dict.fromkeys(prague.bits_of(p.spec.prague) for p in scalable):
            hosts = [h for p in scalable if prague.bits_of(p.spec.prague) == bits
                     for h in (p.spec.src, p.spec.dst)]
            self.cc[_key(l4s.SCALABLE, bits)] = l4s.register_cc(self.testbed, hosts, bits)
        for p in plans:
            if p.spec.kind == "l4s":
                self._l4s(p)
            elif p.spec.kind == "tcp":
                self._classic_ecn(p)

    def _l4s(self, p: FlowPlan) -> None:
        kind = l4s.choose(self.testbed, p.spec.src, p.spec.cc)
        bits = prague.bits_of(p.spec.prague)
        key = _key(kind, bits)
        if key not in self.cc:
            self.cc[key] = l4s.prague() if kind == l4s.PRAGUE else l4s.register_cc(self.testbed, bits=bits)
        cc = self.cc[key]
        if kind == l4s.PRAGUE and p.spec.prague is not None:
            p.notes.append("prague options not applied: the kernel's TCP Prague runs with its own")
        p.cc = cc.name
        if kind == l4s.SCALABLE:
            self._set(p.spec.src, *PACING_CA_RATIO)
            p.notes.append(f"{p.spec.src}: {PACING_CA_RATIO[0]}={PACING_CA_RATIO[1]} during the run")
        p.notes.append(f"congestion control {cc.name} ({kind}), AccECN requested: {cc.accecn}")
        for host in (p.spec.src, p.spec.dst):
            if host not in self.routed:
                self.routed.append(host)
                ccroute.install(self.testbed, host)
        if cc.rewrite_ect1:
            where = (p.spec.src, egress_iface(self.testbed, p.spec.src, p.dst_ip))
            if where not in self.rewrites:
                self.rewrites.append(where)
                ect1.attach(self.testbed, *where)

    def _classic_ecn(self, p: FlowPlan) -> None:
        """ect0: the sender requests ECN; not-ect: it does not (2 = accept only); the receiver
        must accept (1 or 2). None leaves the host as the spec set it."""
        if p.spec.ecn is None:
            return
        self._set(p.spec.src, TCP_ECN, "1" if p.ecn == "ect0" else "2")
        if p.ecn == "ect0" and self._get(p.spec.dst, TCP_ECN) == "0":
            self._set(p.spec.dst, TCP_ECN, "2")

    def _get(self, host: str, key: str) -> str:
        return self.testbed.run(host, ["sysctl", "-n", key]).stdout.strip()

    def _set(self, host: str, key: str, value: str) -> None:
        prev = self._get(host, key)
        if prev != value:
            if not any(h == host and k == key for h, k, _ in self.sysctls):
                self.sysctls.append((host, key, prev))
            self.testbed.sysctl(host, key, value)

    def ecn_sent(self, p: FlowPlan) -> str:
        """What a tcp flow's data carry, given the sender's tcp_ecn now."""
        if p.spec.kind != "tcp":
            return p.ecn
        return "ect0" if self._get(p.spec.src, TCP_ECN) == "1" else "not-ect"

    def undo(self) -> list[str]:
        """Undo everything, newest first; returns what could not be undone."""
        failed = []
        steps = [*(("sysctl", s) for s in reversed(self.sysctls)),
                 *(("rewrite", w) for w in reversed(self.rewrites)),
                 *(("route", h) for h in reversed(self.routed)),
                 *(("cc", c) for c in self.cc.values() if c.kind == l4s.SCALABLE)]
        for what, item in steps:
            try:
                self._undo_one(what, item)
            except Exception as e:  # noqa: BLE001 - undo the rest whatever one step says
                failed.append(f"{what} {item}: {e}")
        self.sysctls, self.rewrites, self.routed, self.cc = [], [], [], {}
        return failed

    def _undo_one(self, what: str, item: object) -> None:
        if what == "sysctl":
            host, key, prev = item  # type: ignore[misc]
            self.testbed.sysctl(host, key, prev)
        elif what == "rewrite":
            ect1.detach(self.testbed, *item)  # type: ignore[misc]
        elif what == "route":
            ccroute.remove(self.testbed, item)  # type: ignore[arg-type]
        else:
            l4s.unregister(self.testbed, item)  # type: ignore[arg-type]


def _key(kind: str, bits: int) -> str:
    """The registry key of a congestion control: one per scalable variant."""
    return kind if kind == l4s.PRAGUE or bits == prague.DEFAULT_BITS else f"{kind}:{bits:x}"


def egress_iface(testbed: Testbed, host: str, dst_ip: str) -> str:
    """The interface `host` sends to dst_ip through."""
    out = testbed.run(host, ["ip", "-j", "route", "get", dst_ip]).stdout
    return json.loads(out)[0]["dev"]
