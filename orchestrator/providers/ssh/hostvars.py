"""What each host of an ssh testbed must do, as Ansible host variables (the `tb` dict).

Every command a role runs comes from here as an argument list, so the roles stay thin loops
and the commands are the same ones the local provider runs: the Linux shaper and netem lines
are built by orchestrator/bottleneck/shaping.py itself, and the FreeBSD lines come from
orchestrator/providers/ssh/freebsd.py. The roles add what only the host can know (was this address already
there? what was this sysctl before?) and record it, so teardown restores exactly that.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from orchestrator.bottleneck import shaping as link
from orchestrator.errors import UserError
from orchestrator.providers.ssh import freebsd
from orchestrator.providers.ssh.settings import project_dir, project_python, remote_dir, settings_of
from orchestrator.testbed.base import Testbed
from orchestrator.testbed.topology import routes

PROBED_QDISCS = ["netem"]
DELAYLINE_READY = "delayline ready"


def delay_mode(tb: Testbed, kernel: dict[str, dict[str, Any]]) -> str:
    """dummynet on a FreeBSD router; on Linux netem where the kernels have it, else the
    project's NFQUEUE delay line (as the local provider decides, but on the remote kernel)."""
    spec = tb.spec()
    router = tb.bottleneck.router
    if _os(tb, router) == "freebsd":
        return "dummynet"
    want = spec.bottleneck.delay_mode
    receiver = tb.host(next(i.peer for i in tb.host(router).interfaces if i.name == tb.bottleneck.egress))
    has_netem = "netem" in kernel[router].get("qdiscs", []) and _os(tb, receiver.name) == "linux"
    if want == "netem" and not has_netem:
        raise UserError(f"{router}: delay_mode netem, but its kernel has no netem qdisc "
                        f"(use delay_mode: nfqueue or auto)")
    if want == "auto":
        return "netem" if has_netem else "nfqueue"
    return want


def _os(tb: Testbed, host: str) -> str:
    ssh = tb.spec().host(host).ssh
    assert ssh is not None
    return ssh.os


def host_vars(tb: Testbed, kernel: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:

    spec = tb.spec()
    s = settings_of(spec)
    tc = _link_commands(tb, kernel)
    out = {}
    for name, host in tb.hosts.items():
        os_ = _os(tb, name)
        hs = spec.host(name)
        v: dict[str, Any] = {
            "testbed": tb.name, "host": name, "role": host.role, "os": os_,
            "dir": remote_dir(s, tb.name, name), "comment": f"tb-{tb.name}",
            "interfaces": [_interface(os_, i.name, i.address) for i in host.interfaces],
            "offloads": [o for i in host.interfaces for o in _offloads(os_, i.name)],
            "sysctls": [_sysctl(os_, k, val) for k, val in _sysctls(tb, name, os_)],
            "routes": _routes(tb, name, os_),
            "tc_setup": [c for h, c in tc if h == name],
            "tc_teardown": _tc_teardown([c for h, c in tc if h == name]),
            "modules": _modules(tb, name, os_, kernel),
            "tools": _tools(os_, host.role),
            "packages": PACKAGES[os_],
            "install_packages": s.install_packages,
            "project": {"dir": project_dir(s), "python": project_python(s),
                        "install": s.install_project, "needed": False,
                        "imports": ["orchestrator.bottleneck.delayline", "netfilterqueue"] if os_ == "linux"
                        else ["orchestrator.bottleneck.divert"]},
            "router": None,
        }
        if os_ == "linux" and hs.tcp.cc not in kernel[name].get("ccs", []):
            raise UserError(f"{name}: congestion control {hs.tcp.cc!r} is not available there "
                            f"(available: {', '.join(kernel[name].get('ccs', []))})")
        if name == tb.bottleneck.router:
            v["router"] = _router(tb, os_)
            v["project"]["needed"] = bool(v["router"].get("delayline") or v["router"].get("divert"))
        out[name] = v
    return out


# ---------------------------------------------------------------- per-host pieces


def _interface(os_: str, dev: str, address: str) -> dict[str, Any]:
    ip = address.split("/")[0]
    if os_ == "linux":
        return {"name": dev, "address": address,
                "show": ["ip", "-o", "-4", "addr", "show", "dev", dev], "present": f"inet {ip}/",
                "add": ["ip", "addr", "add", address, "dev", dev],
                "del": ["ip", "addr", "del", address, "dev", dev],
                "link_show": ["ip", "-o", "link", "show", "dev", dev], "is_up": "[<,]UP[,>]",
                "up": ["ip", "link", "set", dev, "up"], "down": ["ip", "link", "set", dev, "down"]}
    return {"name": dev, "address": address,
            "show": ["ifconfig", dev, "inet"], "present": f"inet {ip} ",
            "add": ["ifconfig", dev, "inet", address, "alias"],
            "del": ["ifconfig", dev, "inet", ip, "-alias"],
            "link_show": ["ifconfig", dev], "is_up": "[<,]UP[,>]",
            "up": ["ifconfig", dev, "up"], "down": ["ifconfig", dev, "down"]}


def _offloads(os_: str, dev: str) -> list[dict[str, Any]]:
    """Segmentation and receive offloads off (the bottleneck must see real packets)."""
    if os_ == "linux":
        feats = (("tso", "tcp-segmentation-offload: on"), ("gso", "generic-segmentation-offload: on"),
                 ("gro", "generic-receive-offload: on"))
        return [{"dev": dev, "feature": f, "read": ["ethtool", "-k", dev], "on_pattern": pat,
                 "off": ["ethtool", "-K", dev, f, "off"], "on": ["ethtool", "-K", dev, f, "on"]}
                for f, pat in feats]
    feats = (("tso", "TSO4"), ("lro", "LRO"))
    return [{"dev": dev, "feature": f, "read": ["ifconfig", dev], "on_pattern": pat,
             "off": ["ifconfig", dev, f"-{f}"], "on": ["ifconfig", dev, f]} for f, pat in feats]


def _sysctls(tb: Testbed, name: str, os_: str) -> list[tuple[str, str]]:
    hs = tb.spec().host(name)
    if os_ == "freebsd":
        out = freebsd.endpoint_sysctls(hs.tcp.cc, hs.tcp.ecn)
        return out + (freebsd.router_sysctls(tb.bottleneck) if name == tb.bottleneck.router else [])
    out = [("net.ipv4.tcp_ecn", str(hs.tcp.ecn))]
    if hs.role == "router":
        out.append(("net.ipv4.ip_forward", "1"))
    return out


def _sysctl(os_: str, key: str, value: str) -> dict[str, Any]:
    prefix = ["sysctl", "-q", "-w"] if os_ == "linux" else ["sysctl"]
    return {"key": key, "value": value, "read": ["sysctl", "-n", key], "set_prefix": prefix}


def _routes(tb: Testbed, name: str, os_: str) -> dict[str, list[list[str]]]:
    """Static routes to the subnets behind routers. On Linux every route (the connected ones
    too) carries the host's congestion control, as the local provider does; FreeBSD sets it
    with a sysctl instead."""

    host = tb.host(name)
    rts = routes(tb.spec(), tb.hosts)[name]
    if os_ == "freebsd":
        return {"add": [["route", "-q", "add", "-net", net, via] for net, via in rts],
                "del": [["route", "-q", "delete", "-net", net] for net, _ in rts]}
    cc = ["congctl", tb.spec().host(name).tcp.cc]
    add, rm = [], []
    for iface in host.interfaces:
        net = str(ipaddress.IPv4Interface(iface.address).network)
        base = ["ip", "route", "replace", net, "dev", iface.name, "proto", "kernel", "scope", "link",
                "src", iface.ip]
        add.append([*base, *cc])
        rm.append(base)  # back to a plain connected route (gone anyway with the address)
    for net, via in rts:
        add.append(["ip", "route", "replace", net, "via", via, *cc])
        rm.append(["ip", "route", "del", net, "via", via])
    return {"add": add, "del": rm}


PACKAGES = {"linux": {"ip": "iproute2", "tc": "iproute2", "ss": "iproute2", "ethtool": "ethtool",
                     "iptables": "iptables", "iperf3": "iperf3", "tcpdump": "tcpdump", "sysctl": "procps"},
            "freebsd": {"iperf3": "iperf3"}}


def _modules(tb: Testbed, name: str, os_: str, kernel: dict[str, dict[str, Any]]) -> list[list[str]]:
    """FreeBSD kernel modules: ipfw, dummynet (and ipdivert) on the router, the CC's module."""
    if os_ != "freebsd":
        return []
    cmds = freebsd.cc_module_commands(tb.spec().host(name).tcp.cc, kernel[name].get("ccs", []))
    if name == tb.bottleneck.router:
        ssh = tb.spec().host(name).ssh
        assert ssh is not None
        cmds = freebsd.module_commands(ssh.aqm or "fifo") + cmds
    return cmds


def _tools(os_: str, role: str) -> list[str]:
    if os_ == "freebsd":
        return ["ifconfig", "route", "sysctl"] + (["ipfw", "kldload"] if role == "router" else
                                                   ["iperf3", "tcpdump"])
    base = ["ip", "sysctl", "ethtool", "tc"]
    return base + (["iptables"] if role == "router" else ["iperf3", "tcpdump", "ss"])


# ---------------------------------------------------------------- the bottleneck


def _link_commands(tb: Testbed, kernel: dict[str, dict[str, Any]]) -> list[tuple[str, Any]]:
    """link.py's shaper (and netem) on a Linux router, recorded as (host, argv)."""
    bn = tb.bottleneck
    if _os(tb, bn.router) != "linux":
        return []
    steps = link.shaper_commands(bn, _leaf(tb, kernel))
    if bn.delay_mode == "netem":
        steps += link.netem_commands(bn, tb.hosts)
    # a command the local provider lets fail (check=False) may fail on the host too
    return [(host, argv if check else {"argv": argv, "ignore": True}) for host, argv, check in steps]


def _leaf(tb: Testbed, kernel: dict[str, dict[str, Any]]) -> list[str] | None:
    """The router's `aqm` as the HTB leaf, if asked for and the kernel has it."""
    ssh = tb.spec().host(tb.bottleneck.router).ssh
    assert ssh is not None
    if not ssh.aqm or ssh.aqm == "fifo":
        return None
    have = kernel[tb.bottleneck.router].get("qdiscs", [])
    if ssh.aqm not in have:
        raise UserError(f"{tb.bottleneck.router}: this kernel has no {ssh.aqm!r} qdisc; leave ssh.aqm "
                        f"out and run the policy on the nfqueue datapath (testbed run --datapath nfqueue)")
    args: list[str] = [ssh.aqm]
    for key, value in ssh.aqm_args.items():
        if isinstance(value, bool):
            args += [key] if value else []
        else:
            args += [key, str(value)]
    return args


def _tc_teardown(cmds: list[Any]) -> list[list[str]]:
    """`tc qdisc del ... root` for every device the setup gave a root qdisc."""
    devs = []
    for argv in (c["argv"] if isinstance(c, dict) else c for c in cmds):
        if argv[:2] == ["tc", "qdisc"] and argv[2] in ("add", "replace") and "root" in argv:
            dev = argv[argv.index("dev") + 1]
            if dev not in devs:
                devs.append(dev)
    return [["tc", "qdisc", "del", "dev", d, "root"] for d in devs]


def _router(tb: Testbed, os_: str) -> dict[str, Any]:
    bn = tb.bottleneck
    if os_ == "freebsd":
        ssh = tb.spec().host(bn.router).ssh
        assert ssh is not None
        aqm = ssh.aqm or "fifo"
        ipfw = freebsd.ipfw_commands(bn, tb.host(bn.router), tb.hosts, aqm, ssh.aqm_args)
        return {"kind": "freebsd", "ipfw": ipfw, "unipfw": freebsd.teardown_commands(ipfw),
                "divert": _divert(tb, dict(ssh.aqm_args)) if aqm == "divert" else None,
                "delayline": None}
    return {"kind": "linux", "delayline": _delay_line(tb), "divert": None}


def _delay_line(tb: Testbed) -> dict[str, Any] | None:
    """The NFQUEUE delay line, as link._delay_line starts it, with rules that carry a comment."""
    bn = tb.bottleneck
    if bn.delay_mode != "nfqueue" or not (bn.forward_delay_s > 0 or bn.reverse_delay_s > 0
                                          or bn.extra_delay_s):
        return None
    config = link.delay_config(tb)
    rules = link.delay_rules(tb)  # the same rules (and comment) as link.py's, so either removes them
    return {"config": config, "ready": DELAYLINE_READY,
            "add": [["iptables", "-t", "mangle", "-A", *r] for r in rules],
            "del": [["iptables", "-t", "mangle", "-D", *r] for r in rules],
            "argv": ["-m", "orchestrator.bottleneck.delayline"]}


def _divert(tb: Testbed, args: dict[str, Any]) -> dict[str, Any]:
    """The divert(4) datapath's config (orchestrator/bottleneck/divert.py): the whole link in userspace."""

    bn = tb.bottleneck
    policy = str(args.pop("policy", "dualpi2"))
    tel = f"{remote_dir(settings_of(tb.spec()), tb.name, bn.router)}/telemetry"
    return {"config": {"divert_port": freebsd.DIVERT_PORT, "policy": policy, "policy_args": args,
                       "rate_bps": bn.rate_bps, "buffer_pkts": bn.buffer_pkts,
                       "buffer_bytes": bn.buffer_bytes, "buffer_in": bn.buffer_in,
                       "telemetry_dir": tel, "counters_path": f"{tel}/divert-counters.json"},
            "argv": ["-m", "orchestrator.bottleneck.divert"], "ready": "divert ready"}
