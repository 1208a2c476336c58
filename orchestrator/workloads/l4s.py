"""The L4S sender's congestion control: TCP Prague where the kernel has it, else the project's
scalable congestion control (bpf/scalable_cc.bpf.c), registered as a BPF struct_ops.

Pitfall (FACTS.md): a BPF congestion control must never become a namespace's default through
sysctl (EPERM, and a kernel reference leaks until reboot). It is set per socket only:
tcp_sender.py sets TCP_CONGESTION before connect() and before listen(), and ccroute.py keeps
the testbed's per-route congctl from overriding it.

AccECN: this kernel (6.18) refuses net.ipv4.tcp_ecn=3, so AccECN is negotiated only through a
congestion control that carries TCP_CONG_NEEDS_ACCECN. The scalable CC is registered with it
when the kernel accepts the flag (seen here: the SYN carries AE|CWR|ECE and tcp_info counts
ECT(1)/CE bytes); elsewhere it falls back to classic ECN feedback with DCTCP's receiver-side
echo, still with per-RTT alpha.

The CC is named per testbed (`l4s_<testbed>`), so two testbeds never share one, and
`bpftool struct_ops unregister` by name only ever hits ours. `testbed down` unregisters it
through the 'struct_ops' cleanup record (unregister_cc below).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from orchestrator.errors import UserError
from orchestrator.testbed import Testbed
from orchestrator.workloads import bpfbuild

PRAGUE = "prague"
SCALABLE = "scalable"
TCP_CONG_NEEDS_ECN = 0x2
TCP_CONG_NEEDS_ACCECN = 0x4
NAME_MAX = 15  # TCP_CA_NAME_MAX - 1, and BPF_OBJ_NAME_LEN - 1 for the struct_ops map


@dataclass(frozen=True)
class CongestionControl:
    name: str  # what TCP_CONGESTION is set to
    kind: str  # 'prague' or 'scalable'
    accecn: bool  # AccECN is requested by this CC
    rewrite_ect1: bool  # data leave as ECT(0) and need the egress rewrite to ECT(1)


def cc_name(testbed: Testbed) -> str:
    return f"l4s_{testbed.name}"[:NAME_MAX]


def available_ccs(testbed: Testbed, host: str) -> list[str]:
    out = testbed.run(host, ["sysctl", "-n", "net.ipv4.tcp_available_congestion_control"]).stdout
    return out.split()


def has_prague(testbed: Testbed, host: str) -> bool:
    if PRAGUE in available_ccs(testbed, host):
        return True
    return testbed.run(host, ["modinfo", "-F", "name", "tcp_prague"], check=False).returncode == 0


def unavailable(testbed: Testbed, host: str, wanted: str | None) -> str | None:
    """Why an L4S flow with cc `wanted` (None, 'prague' or 'scalable') cannot run from/to
    host, or None if it can."""
    if wanted not in (None, PRAGUE, SCALABLE):
        return f"an l4s flow takes cc 'prague' or 'scalable' (or none), got {wanted!r}"
    if wanted == PRAGUE:
        if has_prague(testbed, host):
            return None
        return (f"TCP Prague is not available on {host}'s kernel (available: "
                f"{', '.join(available_ccs(testbed, host))}); use cc: scalable, the BPF one")
    if wanted is None and has_prague(testbed, host):
        return None
    why = bpfbuild.toolchain_missing()
    return f"the scalable BPF congestion control cannot be built here: {why}" if why else None


def choose(testbed: Testbed, src: str, wanted: str | None) -> str:
    """'prague' or 'scalable' for an L4S flow from src."""
    if wanted == PRAGUE or (wanted is None and has_prague(testbed, src)):
        return PRAGUE
    return SCALABLE


def prague() -> CongestionControl:
    # Prague sets ECT(1) itself and asks for AccECN.
    return CongestionControl(PRAGUE, PRAGUE, accecn=True, rewrite_ect1=False)


def register_cc(testbed: Testbed) -> CongestionControl:
    """Build and register this testbed's scalable CC; `testbed down` will unregister it."""
    name = cc_name(testbed)
    unregister_cc(name)  # a leftover of a crashed run would make the name clash
    testbed.add_cleanup("struct_ops", name)  # before registering: a crash in between is safe
    errors = []
    for flags, accecn in ((TCP_CONG_NEEDS_ECN | TCP_CONG_NEEDS_ACCECN, True),
                          (TCP_CONG_NEEDS_ECN, False)):
        obj = bpfbuild.build("scalable_cc.bpf.c", {"CC_NAME": name, "CC_FLAGS": hex(flags)})
        res = subprocess.run(["bpftool", "struct_ops", "register", str(obj)],
                             capture_output=True, text=True)
        if res.returncode == 0:
            return CongestionControl(name, SCALABLE, accecn=accecn, rewrite_ect1=True)
        errors.append(res.stderr.strip())  # an older kernel refuses NEEDS_ACCECN: try without
    testbed.remove_cleanup("struct_ops", name)
    raise UserError(f"cannot register the scalable congestion control {name!r}: {' / '.join(errors)}")


def registered(name: str) -> list[int]:
    """Ids of the struct_ops maps called `name` (several if an old one is still being freed)."""
    try:
        res = subprocess.run(["bpftool", "-j", "struct_ops", "show"], capture_output=True, text=True)
    except FileNotFoundError:  # no bpftool: nothing of ours can be registered
        return []
    if res.returncode != 0 or not res.stdout.strip():
        return []
    return [int(m["id"]) for m in json.loads(res.stdout) if m.get("name") == name]


def unregister_cc(name: str) -> None:
    """Unregister the struct_ops congestion control `name`; nothing happens if it is gone.

    The name is free at once; sockets still using the CC keep its map alive (bpftool still
    lists it) until they close."""
    for map_id in registered(name):
        subprocess.run(["bpftool", "struct_ops", "unregister", "id", str(map_id)],
                       capture_output=True, text=True)
    with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
        if name in f.read().split():
            raise UserError(f"congestion control {name!r} is still registered after "
                            f"`bpftool struct_ops unregister`")
