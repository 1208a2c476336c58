"""The commands a FreeBSD-14 host runs for the testbed: ipfw + dummynet on the router, sysctls
everywhere. Pure functions returning argument lists; the freebsd_router and endpoint roles run
exactly these (through the generated host vars), and tests check them against ipfw(8)'s grammar.

Grammar facts this relies on (sbin/ipfw/dummynet.c, ipfw(8)):
  - `pipe N config bw 50Mbit/s delay 10 queue 100`: bw is an integer in bit/s with an optional
    K/M/G prefix (at most 2^31-1); delay is an integer number of milliseconds (<= 10000);
    queue is slots (2..net.inet.ip.dummynet.pipe_slot_limit, default 100) or `<n>bytes`
    (<= pipe_byte_limit, default 1 MB).
  - `codel` and `pie` go on a pipe's or queue's flowset and take every token after them as
    their parameters, so they come last; `sched N config pipe N type fq_codel|fq_pie ...`
    likewise. Times are `<n>us|ms|s` (a bare number is ms), at most 15 characters.
  - A packet reinjected from a divert(4) socket resumes at the rule after the divert rule;
    with net.inet.ip.fw.one_pass=1 it leaves the firewall after its pipe or queue.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import UserError
from orchestrator.testbed.base import Bottleneck, Host, sysctl_argv

RULE_SET = 7  # every rule of the testbed is in this ipfw set
RULE_DIVERT = 10050
RULE_FORWARD = 10100
RULE_REVERSE = 10200  # + i per reverse-path rule
PIPE_FORWARD = 7101  # also the sched and queue number for fq_codel / fq_pie
PIPE_REVERSE = 7102
PIPE_EXTRA = 7110  # + i per (receiver, sender) pair with extra access-link delay
DIVERT_PORT = 8668
SLOT_LIMIT_DEFAULT = 100
BYTE_LIMIT_DEFAULT = 1 << 20
MAX_BW = (1 << 31) - 1

TIME = re.compile(r"^[0-9]+(\.[0-9]+)?(us|ms|s)?$")
NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$")
FLOWSET_AQMS = ("codel", "pie")
SCHED_AQMS = ("fq_codel", "fq_pie")
AQMS = ("fifo", *FLOWSET_AQMS, *SCHED_AQMS, "divert")

# parameter -> kind: 'time', 'number', 'int', or a (true-token, false-token) pair of flags
_ECN = ("ecn", "noecn")
_PIE = {"target": "time", "tupdate": "time", "max_burst": "time", "max_ecnth": "number",
        "alpha": "number", "beta": "number", "ecn": _ECN, "capdrop": ("capdrop", "nocapdrop"),
        "derand": ("derand", "noderand"), "dre": ("dre", "ts"), "onoff": ("onoff", None)}
_FQ = {"quantum": "int", "limit": "int", "flows": "int"}
AQM_PARAMS: dict[str, dict[str, Any]] = {
    "fifo": {},
    "codel": {"target": "time", "interval": "time", "ecn": _ECN},
    "pie": _PIE,
    "fq_codel": {"target": "time", "interval": "time", "ecn": _ECN, **_FQ},
    "fq_pie": {**_PIE, **_FQ},
    "divert": {},  # the project's policies: see orchestrator/bottleneck/divert.py
}

# Linux congestion control names -> FreeBSD's (mod_cc(4)); newreno is the kernel's own.
CC_NAMES = {"reno": "newreno", "newreno": "newreno", "cubic": "cubic", "dctcp": "dctcp",
            "htcp": "htcp", "vegas": "vegas", "cdg": "cdg", "chd": "chd", "hd": "hd"}


def bw_token(rate_bps: float) -> str:
    """`bw` argument: an exact integer rate with the largest prefix that keeps it exact."""
    bps = int(round(rate_bps))
    if bps <= 0 or bps > MAX_BW:
        raise UserError(f"dummynet rates are 1 bit/s to {MAX_BW} bit/s; got {rate_bps:g} bit/s")
    for div, prefix in ((1_000_000_000, "G"), (1_000_000, "M"), (1000, "K")):
        if bps % div == 0:
            return f"{bps // div}{prefix}bit/s"
    return f"{bps}bit/s"


def delay_ms(seconds: float, what: str) -> int:
    """dummynet delays are whole milliseconds up to 10 s; refuse what would be rounded away."""
    ms = round(seconds * 1000)
    if abs(ms - seconds * 1000) > 0.01 or not 0 <= ms <= 10000:
        raise UserError(f"{what}: dummynet delays are whole milliseconds from 0 to 10000; "
                        f"got {seconds * 1000:g} ms")
    return ms


def queue_token(bn: Bottleneck) -> str:
    """The buffer, in the unit the spec gave it (slots for packets, bytes otherwise)."""
    return str(bn.buffer_pkts) if bn.buffer_in == "packets" else f"{bn.buffer_bytes}bytes"


def aqm_tokens(aqm: str, args: Mapping[str, Any]) -> list[str]:
    """The parameters of a dummynet AQM or scheduler, checked against what ipfw accepts."""
    if aqm not in AQM_PARAMS:
        raise UserError(f"unknown FreeBSD aqm {aqm!r} (expected one of: {', '.join(AQMS)})")
    allowed = AQM_PARAMS[aqm]
    out: list[str] = []
    for key, value in args.items():
        if aqm == "divert":
            continue  # policy and its parameters, for the divert datapath
        kind = allowed.get(key)
        if kind is None:
            raise UserError(f"aqm_args: {aqm} has no parameter {key!r} "
                            f"(expected: {', '.join(allowed) or 'none'})")
        out += _param(aqm, key, kind, value)
    return out


def _param(aqm: str, key: str, kind: Any, value: Any) -> list[str]:
    if isinstance(kind, tuple):
        if not isinstance(value, bool):
            raise UserError(f"aqm_args.{key}: expected true or false, got {value!r}")
        token = kind[0] if value else kind[1]
        return [token] if token else []
    text = str(value)
    if isinstance(value, bool) or (kind == "time" and (not TIME.match(text) or len(text) > 15)):
        raise UserError(f"aqm_args.{key}: expected a time like '5ms', got {value!r}")
    if kind == "number" and not NUMBER.match(text):
        raise UserError(f"aqm_args.{key}: expected a non-negative number, got {value!r}")
    if kind == "int" and not text.isdigit():
        raise UserError(f"aqm_args.{key}: expected a whole number, got {value!r}")
    return [key, text]


# ---------------------------------------------------------------- the router


def module_commands(aqm: str = "fifo") -> list[list[str]]:
    """Kernel modules. The kenv comes first: a freshly loaded ipfw then accepts by default,
    instead of cutting off the SSH session that loads it (it is a no-op if ipfw is loaded)."""
    cmds = [["kenv", "net.inet.ip.fw.default_to_accept=1"], ["kldload", "-n", "ipfw"],
            ["kldload", "-n", "dummynet"]]
    if aqm == "divert":
        cmds.append(["kldload", "-n", "ipdivert"])
    return cmds


def router_sysctls(bn: Bottleneck) -> list[tuple[str, str]]:
    out = [("net.inet.ip.forwarding", "1"), ("net.inet.ip.fw.one_pass", "1")]
    if bn.buffer_in == "packets" and bn.buffer_pkts > SLOT_LIMIT_DEFAULT:
        out.append(("net.inet.ip.dummynet.pipe_slot_limit", str(bn.buffer_pkts)))
    if bn.buffer_in != "packets" and bn.buffer_bytes > BYTE_LIMIT_DEFAULT:
        out.append(("net.inet.ip.dummynet.pipe_byte_limit", str(bn.buffer_bytes)))
    return out


def offload_commands(router: Host) -> list[list[str]]:
    """TSO and LRO off on the router's data interfaces, so dummynet sees real packets."""
    return [["ifconfig", i.name, "-tso", "-lro"] for i in router.interfaces]


def ipfw_commands(bn: Bottleneck, router: Host, hosts: Mapping[str, Host], aqm: str = "fifo",
                  aqm_args: Mapping[str, Any] | None = None) -> list[list[str]]:
    """Pipes, schedulers, queues and rules of the bottleneck, in the order to run them."""
    args = aqm_tokens(aqm, aqm_args or {})
    return [*_forward(bn, aqm, args), *_reverse(bn, router, hosts)]


def _forward(bn: Bottleneck, aqm: str, args: list[str]) -> list[list[str]]:
    fwd = str(delay_ms(bn.forward_delay_s, "forward delay"))
    pipe = ["ipfw", "pipe", str(PIPE_FORWARD), "config"]
    rule = ["ipfw", "-q", "add", str(RULE_FORWARD), "set", str(RULE_SET)]
    match = ["ip", "from", "any", "to", "any", "out", "xmit", bn.egress]
    if aqm == "divert":
        # the divert datapath is the link (rate, buffer, queues, policy); dummynet only delays
        cmds = [["ipfw", "-q", "add", str(RULE_DIVERT), "set", str(RULE_SET), "divert",
                 str(DIVERT_PORT), *match]]
        if fwd != "0":
            cmds += [[*pipe, "delay", fwd], [*rule, "pipe", str(PIPE_FORWARD), *match]]
        return cmds
    link = ["bw", bw_token(bn.rate_bps), "delay", fwd]
    if aqm in SCHED_AQMS:
        # the scheduler holds the packets: its `limit` (packets) is the buffer
        if "limit" not in args:
            args = [*args, "limit", str(bn.buffer_pkts)]
        return [[*pipe, *link],
                ["ipfw", "sched", str(PIPE_FORWARD), "config", "pipe", str(PIPE_FORWARD),
                 "type", aqm, *args],
                ["ipfw", "queue", str(PIPE_FORWARD), "config", "sched", str(PIPE_FORWARD)],
                [*rule, "queue", str(PIPE_FORWARD), *match]]
    tail = [aqm, *args] if aqm in FLOWSET_AQMS else []
    return [[*pipe, *link, "queue", queue_token(bn), *tail], [*rule, "pipe", str(PIPE_FORWARD), *match]]


def _reverse(bn: Bottleneck, router: Host, hosts: Mapping[str, Host]) -> list[list[str]]:
    """The ACK path: the base reverse delay, plus per (receiver, sender) pair the round-trip
    extra delay of their access links, as the Linux delay line applies it."""
    cmds: list[list[str]] = []
    rule_no = RULE_REVERSE
    ingress = [i for i in router.interfaces if i.name != bn.egress]
    far = _far_addresses(router, bn, hosts)
    senders = [(iface, ip) for iface in ingress for ip in far[iface.name]]
    receivers = far[bn.egress]
    for k, (iface, s_ip, r_ip, total) in enumerate(_extra_pairs(bn, senders, receivers)):
        pipe = PIPE_EXTRA + k
        cmds += [["ipfw", "pipe", str(pipe), "config", "delay", str(delay_ms(total, "reverse delay"))],
                 ["ipfw", "-q", "add", str(rule_no), "set", str(RULE_SET), "pipe", str(pipe), "ip",
                  "from", r_ip, "to", s_ip, "out", "xmit", iface]]
        rule_no += 1
    rev = delay_ms(bn.reverse_delay_s, "reverse delay")
    if rev:
        cmds.append(["ipfw", "pipe", str(PIPE_REVERSE), "config", "delay", str(rev)])
        for iface in ingress:
            cmds.append(["ipfw", "-q", "add", str(rule_no), "set", str(RULE_SET), "pipe",
                         str(PIPE_REVERSE), "ip", "from", "any", "to", "any", "out", "xmit", iface.name])
            rule_no += 1
    return cmds


def _far_addresses(router: Host, bn: Bottleneck, hosts: Mapping[str, Host]) -> dict[str, list[str]]:
    """Per router interface, the addresses of the endpoints reached through it."""
    out: dict[str, list[str]] = {}
    for iface in router.interfaces:
        seen, todo, ips = {router.name}, [iface.peer], []
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            host = hosts[name]
            if host.role == "router":
                todo += [i.peer for i in host.interfaces]
            else:
                ips += [i.ip for i in host.interfaces]
        out[iface.name] = ips
    return out


def _extra_pairs(bn: Bottleneck, senders: list[tuple[Any, str]],
                 receivers: list[str]) -> list[tuple[str, str, str, float]]:
    extra = bn.extra_delay_s
    if not extra:
        return []
    pairs = []
    for iface, s_ip in senders:
        for r_ip in receivers:
            add = 2 * extra.get(s_ip, 0.0) + 2 * extra.get(r_ip, 0.0)
            if add > 0:
                pairs.append((iface.name, s_ip, r_ip, bn.reverse_delay_s + add))
    return pairs


def teardown_commands(setup: list[list[str]]) -> list[list[str]]:
    """Undo exactly what `setup` (ipfw_commands' output) added: its rules first, then its
    queues, schedulers and pipes, one command each, so one already gone does not stop the rest."""
    rules = [["ipfw", "-q", "delete", argv[3]] for argv in setup if argv[1:3] == ["-q", "add"]]
    order = {"queue": 0, "sched": 1, "pipe": 2}
    objs = sorted((argv for argv in setup if argv[1] in order and argv[3] == "config"),
                  key=lambda argv: order[argv[1]])
    return [*rules, *(["ipfw", argv[1], "delete", argv[2]] for argv in objs)]


# ---------------------------------------------------------------- every host


def cc_name(linux_cc: str) -> str:
    try:
        return CC_NAMES[linux_cc]
    except KeyError:
        raise UserError(f"congestion control {linux_cc!r} has no FreeBSD counterpart "
                        f"(expected one of: {', '.join(sorted(CC_NAMES))})") from None


def endpoint_sysctls(cc: str, ecn: int) -> list[tuple[str, str]]:
    """net.inet.tcp.ecn.enable: 0 off, 1 request and accept, 2 accept only (as Linux's
    tcp_ecn)."""
    if ecn not in (0, 1, 2):
        raise UserError(f"tcp.ecn: expected 0, 1 or 2, got {ecn!r}")
    return [("net.inet.tcp.cc.algorithm", cc_name(cc)), ("net.inet.tcp.ecn.enable", str(ecn))]


def cc_module_commands(cc: str, available: list[str]) -> list[list[str]]:
    """Load the CC's module (cc_<name>) unless the kernel already offers it."""
    name = cc_name(cc)
    return [] if name in available else [["kldload", "-n", f"cc_{name}"]]


def sysctl_command(key: str, value: str) -> list[str]:
    return sysctl_argv(key, value, "freebsd")
