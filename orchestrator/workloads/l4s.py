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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.errors import UserError
from orchestrator.testbed.base import Testbed
from orchestrator.workloads import bpfbuild
from orchestrator.workloads import prague as prague_opts

PRAGUE = "prague"
SCALABLE = "scalable"
TCP_CONG_NEEDS_ECN = 0x2
TCP_CONG_NEEDS_ACCECN = 0x4
CCS = "/proc/sys/net/ipv4/tcp_available_congestion_control"
NAME_MAX = 15  # TCP_CA_NAME_MAX - 1, and BPF_OBJ_NAME_LEN - 1 for the struct_ops map


@dataclass(frozen=True)
class CongestionControl:
    name: str  # what TCP_CONGESTION is set to
    kind: str  # 'prague' or 'scalable'
    accecn: bool  # AccECN is requested by this CC
    rewrite_ect1: bool  # data leave as ECT(0) and need the egress rewrite to ECT(1)
    local: bool = False  # registered in this machine's kernel (namespace hosts)
    hosts: tuple[str, ...] = ()  # remote hosts it is registered on


def cc_name(testbed: Testbed, bits: int = prague_opts.DEFAULT_BITS) -> str:
    """This testbed's scalable CC with the Prague options `bits` (workloads/prague.py)."""
    return prague_opts.cc_name(testbed.name, bits, NAME_MAX)


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


def register_cc(testbed: Testbed, hosts: Sequence[str] = (),
                bits: int = prague_opts.DEFAULT_BITS) -> CongestionControl:
    """Build and register this testbed's scalable CC, with the Prague options `bits`, in the
    kernels of `hosts` (this machine's kernel for namespace hosts, or when no hosts are
    given); `testbed down` (or unregister) removes it. A remote host gets the object copied
    or compiled there."""
    name = cc_name(testbed, bits)
    remote = [h for h in dict.fromkeys(hosts) if not testbed.shares_files(h)]
    targets: list[str | None] = ([None] if len(remote) < len(set(hosts)) or not hosts else []) + remote
    for host in targets:  # a leftover of a crashed run would make the name clash
        unregister_cc(name, testbed, host)
    accecn = True
    for host in targets:
        testbed.add_cleanup("struct_ops", _record(name, host))  # before: a crash in between is safe
        accecn = _register(testbed, host, name, bits) and accecn
    return CongestionControl(name, SCALABLE, accecn=accecn, rewrite_ect1=True,
                             local=None in targets, hosts=tuple(remote))


def _register(testbed: Testbed, host: str | None, name: str,
              bits: int = prague_opts.DEFAULT_BITS) -> bool:
    """Register in host's kernel (None: this machine's); True if with AccECN."""
    run = _runner(testbed, host)
    if name in run(["cat", CCS]).stdout.split():
        return True  # several "remote" hosts on one kernel (a lab of namespaces over ssh)
    errors = []
    for flags, accecn in ((TCP_CONG_NEEDS_ECN | TCP_CONG_NEEDS_ACCECN, True),
                          (TCP_CONG_NEEDS_ECN, False)):
        defines = {"CC_NAME": name, "CC_FLAGS": hex(flags), "PRAGUE": hex(bits)}
        obj = (str(bpfbuild.build("scalable_cc.bpf.c", defines)) if host is None
               else bpfbuild.build_on(testbed, host, "scalable_cc.bpf.c", defines))
        res = run(["bpftool", "struct_ops", "register", obj])
        if res.returncode == 0:
            return accecn
        errors.append(res.stderr.strip())  # an older kernel refuses NEEDS_ACCECN: try without
    testbed.remove_cleanup("struct_ops", _record(name, host))
    where = f" on {host}" if host else ""
    raise UserError(f"cannot register the scalable congestion control {name!r}{where}: {' / '.join(errors)}")


def unregister(testbed: Testbed, cc: CongestionControl) -> None:
    """Undo register_cc everywhere it registered, and drop the cleanup records."""
    for host in ([None] if cc.local else []) + list(cc.hosts):
        unregister_cc(cc.name, testbed, host)
        testbed.remove_cleanup("struct_ops", _record(cc.name, host))


def undo(testbed: Testbed, value: str) -> None:
    """The 'struct_ops' cleanup record: 'NAME' (this machine) or 'NAME@HOST'."""
    name, _, host = value.partition("@")
    if not host:
        unregister_cc(name)
    elif host in testbed.hosts:
        unregister_cc(name, testbed, host)


def _record(name: str, host: str | None) -> str:
    return f"{name}@{host}" if host else name


Runner = Callable[[list[str]], subprocess.CompletedProcess]


def _runner(testbed: Testbed | None, host: str | None) -> Runner:
    if host is None or testbed is None:
        return lambda argv: subprocess.run(argv, capture_output=True, text=True)
    return lambda argv: testbed.run(host, argv, check=False)


def registered(name: str, run: Runner | None = None) -> list[int]:
    """Ids of the struct_ops maps called `name` (several if an old one is still being freed)."""
    try:
        res = (run or _runner(None, None))(["bpftool", "-j", "struct_ops", "show"])
    except FileNotFoundError:  # no bpftool: nothing of ours can be registered
        return []
    if res.returncode != 0 or not res.stdout.strip():
        return []
    return [int(m["id"]) for m in json.loads(res.stdout) if m.get("name") == name]


def unregister_cc(name: str, testbed: Testbed | None = None, host: str | None = None) -> None:
    """Unregister the struct_ops congestion control `name` (in host's kernel, or this
    machine's); nothing happens if it is gone.

    The name is free at once; sockets still using the CC keep its map alive (bpftool still
    lists it) until they close."""
    run = _runner(testbed, host)
    for map_id in registered(name, run):
        run(["bpftool", "struct_ops", "unregister", "id", str(map_id)])
    if name in run(["cat", CCS]).stdout.split():
        raise UserError(f"congestion control {name!r} is still registered{f' on {host}' if host else ''} "
                        f"after `bpftool struct_ops unregister`")
