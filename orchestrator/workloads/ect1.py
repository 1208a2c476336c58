"""The ECT(0) -> ECT(1) rewrite on an L4S sender's egress (bpf/ect1_rewrite.bpf.c).

A tc clsact egress filter, at a preference of its own, that touches only packets of sockets
carrying the MARK_ECT1 bit (SO_MARK), so classic flows from the same host keep their
codepoint. The program has no maps, so nothing is pinned: the filter holds it, and deleting
the filter frees it. Recorded as a 'tc-filter' cleanup '<host>:<iface>' for `testbed down`.
"""

from __future__ import annotations

from orchestrator.testbed.base import Testbed
from orchestrator.workloads import bpfbuild

MARK_ECT1 = 0x200  # rewrite this socket's ECT(0) packets to ECT(1) at egress
PREF = 4034  # tc filter preference of the rewrite, chosen not to collide with datapaths
CLEANUP_KIND = "tc-filter"


def attach(testbed: Testbed, host: str, iface: str) -> None:
    obj = bpfbuild.build_on(testbed, host, "ect1_rewrite.bpf.c", {"ECT1_MARK": hex(MARK_ECT1)})
    testbed.add_cleanup(CLEANUP_KIND, f"{host}:{iface}")
    qdiscs = testbed.run(host, ["tc", "qdisc", "show", "dev", iface]).stdout
    if "clsact" not in qdiscs:
        testbed.run(host, ["tc", "qdisc", "add", "dev", iface, "clsact"])
    testbed.run(host, ["tc", "filter", "replace", "dev", iface, "egress", "pref", str(PREF),
                       "handle", "1", "bpf", "direct-action", "obj", obj, "sec", "tc"])


def attached(testbed: Testbed, host: str, iface: str) -> bool:
    out = testbed.run(host, ["tc", "filter", "show", "dev", iface, "egress"], check=False).stdout
    return f"pref {PREF} " in out


def detach(testbed: Testbed, host: str, iface: str) -> None:
    """Remove the rewrite (idempotent), and the clsact qdisc if nothing else uses it."""
    testbed.run(host, ["tc", "filter", "del", "dev", iface, "egress", "pref", str(PREF)], check=False)
    left = "".join(testbed.run(host, ["tc", "filter", "show", "dev", iface, hook], check=False).stdout
                   for hook in ("ingress", "egress"))
    if not left.strip():
        testbed.run(host, ["tc", "qdisc", "del", "dev", iface, "clsact"], check=False)
    testbed.remove_cleanup(CLEANUP_KIND, f"{host}:{iface}")


def undo(testbed: Testbed, value: str) -> None:
    """The 'tc-filter' cleanup record '<host>:<iface>'."""
    host, iface = value.split(":", 1)
    if host in testbed.hosts:
        detach(testbed, host, iface)
