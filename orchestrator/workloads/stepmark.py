"""A minimal marking bottleneck for the workloads' own tests and benches, not a datapath: a tc
clsact egress filter on the router's shaped interface that CE-marks ECN-capable packets while
the root qdisc holds more than `step_s` of the link rate (bpf/step_marker.bpf.c).

It shares the router with the baseline shaper (HTB + FIFO) only; a real datapath replaces both.
"""

from __future__ import annotations

from orchestrator.testbed.base import Testbed
from orchestrator.workloads import bpfbuild

PREF = 4035


def attach(testbed: Testbed, step_s: float = 0.001) -> int:
    """Mark above step_s of queue; returns the threshold in bytes."""
    bn = testbed.bottleneck
    thresh = max(int(bn.rate_bps / 8 * step_s), 1)
    obj = bpfbuild.build_on(testbed, bn.router, "step_marker.bpf.c", {"THRESH_BYTES": thresh})
    if "clsact" not in testbed.run(bn.router, ["tc", "qdisc", "show", "dev", bn.egress]).stdout:
        testbed.run(bn.router, ["tc", "qdisc", "add", "dev", bn.egress, "clsact"])
    testbed.run(bn.router, ["tc", "filter", "replace", "dev", bn.egress, "egress", "pref", str(PREF),
                            "handle", "1", "bpf", "direct-action", "obj", obj, "sec", "tc"])
    return thresh


def detach(testbed: Testbed) -> None:
    bn = testbed.bottleneck
    testbed.run(bn.router, ["tc", "filter", "del", "dev", bn.egress, "egress", "pref", str(PREF)],
                check=False)
