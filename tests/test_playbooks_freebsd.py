"""The ipfw/dummynet and sysctl commands the FreeBSD roles run, checked against ipfw(8)'s
grammar as FreeBSD's own parser implements it (sbin/ipfw/dummynet.c: the dummynet_params and
aqm_params token tables, read_bandwidth, time_to_us, is_valid_number, the queue-size limits;
and the `ipfw add` rule grammar for the rules we use). No FreeBSD host runs in CI: this is what
stands between a typo and a router that rejects its configuration."""

from __future__ import annotations

import re

import pytest

from orchestrator.errors import UserError
from orchestrator.providers.ssh import freebsd
from orchestrator.testbed.base import Bottleneck, Host, Interface

# --- a model of the parser, from sbin/ipfw/dummynet.c -----------------------------------
DUMMYNET_PARAMS = {"plr", "noerror", "buckets", "dst-ip", "src-ip", "dst-port", "src-port", "proto",
                   "weight", "lmax", "maxlen", "all", "mask", "sched_mask", "flow_mask", "droptail",
                   "ecn", "red", "gred", "codel", "fq_codel", "pie", "fq_pie", "bw", "bandwidth",
                   "delay", "link", "pipe", "queue", "flowset", "sched", "pri", "priority", "type",
                   "flow-id", "profile", "burst"}
AQM_PARAMS = {"codel": {"target": "time", "interval": "time", "ecn": None, "noecn": None},
              "pie": {"target": "time", "tupdate": "time", "max_burst": "time", "max_ecnth": "num",
                      "alpha": "num", "beta": "num", "ecn": None, "noecn": None, "capdrop": None,
                      "nocapdrop": None, "onoff": None, "dre": None, "ts": None, "derand": None,
                      "noderand": None}}
AQM_PARAMS["fq_codel"] = {**AQM_PARAMS["codel"], "quantum": "num", "limit": "num", "flows": "num"}
AQM_PARAMS["fq_pie"] = {**AQM_PARAMS["pie"], "quantum": "num", "limit": "num", "flows": "num"}
# which object each option may configure (NEED(p|fs|sch, ...) in ipfw_config_pipe)
OBJECTS = {"pipe": {"link", "fs", "sch"}, "queue": {"fs"}, "sched": {"sch", "fs"}}
NEEDS = {"bw": "link", "delay": "link", "burst": "link", "queue": "fs", "codel": "fs", "pie": "fs",
         "type": "sch", "pipe": "fs", "sched": "fs", "droptail": "fs", "weight": "fs", "plr": "fs"}


def time_to_us(s: str) -> int:
    m = re.fullmatch(r"([0-9.]+)(.*)", s)
    assert m and len(s) <= 15 and m.group(1).count(".") <= 1, f"not a time: {s!r}"
    unit = m.group(2).lower() or "ms"
    assert unit in ("us", "ms", "s"), f"not a time unit: {s!r}"
    return int(float(m.group(1)) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit])


def read_bandwidth(arg: str) -> int:
    m = re.fullmatch(r"([0-9]+)([KkMmGg]?)(.*)", arg)
    assert m, f"bw needs a number: {arg!r}"
    bw = int(m.group(1)) * {"": 1, "k": 1000, "m": 10**6, "g": 10**9}[m.group(2).lower()]
    rest = m.group(3)
    assert rest in ("", "bit/s", "bits/s", "Bit/s", "bytes/s", "Bytes/s"), f"bw unit: {arg!r}"
    bw *= 8 if rest.lower().startswith("byte") else 1
    assert 0 < bw <= (1 << 31) - 1, f"bandwidth too large: {arg!r}"
    return bw


def parse_config(argv: list[str], sysctls: dict[str, str]) -> dict[str, object]:
    """`ipfw pipe|queue|sched N config ...` as dummynet.c's ipfw_config_pipe reads it."""
    assert argv[0] == "ipfw" and argv[1] in OBJECTS and argv[3] == "config", argv
    assert argv[2].isdigit() and 0 < int(argv[2]) < 65536
    have, out = OBJECTS[argv[1]], {"kind": argv[1], "nr": int(argv[2])}
    av = argv[4:]
    while av:
        tok, av = av[0], av[1:]
        assert tok in DUMMYNET_PARAMS, f"unrecognised option {tok!r} in {argv}"
        assert NEEDS.get(tok, next(iter(have))) in have, f"{tok} is not for a {argv[1]}: {argv}"
        if tok == "bw":
            out["bw"], av = read_bandwidth(av[0]), av[1:]
        elif tok == "delay":
            assert av[0].isdigit() and int(av[0]) <= 10000, f"delay needs 0..10000 ms: {av[0]!r}"
            out["delay_ms"], av = int(av[0]), av[1:]
        elif tok == "queue":
            out["queue"], av = _queue(av[0], sysctls), av[1:]
        elif tok in ("pipe", "sched"):
            assert av[0].isdigit()
            out[tok], av = int(av[0]), av[1:]
        elif tok in ("codel", "pie", "type"):
            name = tok if tok != "type" else av[0]
            av = av if tok != "type" else av[1:]
            out["aqm"], out["aqm_params"] = name, _aqm_params(name, av)
            av = []  # every token after it is its parameter (process_extra_parms)
    return out


def _queue(arg: str, sysctls: dict[str, str]) -> tuple[int, str]:
    m = re.fullmatch(r"([0-9]+)(K|k|B|bytes?)?", arg)
    assert m, f"queue needs a size: {arg!r}"
    n = int(m.group(1)) * (1024 if m.group(2) in ("K", "k") else 1)
    if m.group(2):
        assert n <= int(sysctls.get("net.inet.ip.dummynet.pipe_byte_limit", 1 << 20)), arg
        return n, "bytes"
    assert 2 <= n <= int(sysctls.get("net.inet.ip.dummynet.pipe_slot_limit", 100)), \
        f"2 <= queue size <= pipe_slot_limit: {arg}"
    return n, "slots"


def _aqm_params(name: str, av: list[str]) -> dict[str, object]:
    table = AQM_PARAMS.get(name)
    if table is None:
        assert not av, f"type {name} takes no parameters"
        return {}
    out: dict[str, object] = {}
    while av:
        tok, av = av[0], av[1:]
        assert tok in table, f"{tok} is an invalid parameter of {name}"
        kind = table[tok]
        if kind is None:
            out[tok] = True
            continue
        value, av = av[0], av[1:]
        out[tok] = time_to_us(value) if kind == "time" else float(value)
        if kind == "num":
            assert re.fullmatch(r"[0-9]*\.?[0-9]*", value) and value.count(".") <= 1, value
    return out


RULE = re.compile(r"ipfw -q add (?P<nr>\d+) set (?P<set>\d+) (?P<action>pipe|queue|divert) (?P<arg>\d+) "
                  r"ip from (?P<src>any|[\d.]+) to (?P<dst>any|[\d.]+) out xmit (?P<iface>[\w.]+)")


def parse_rule(argv: list[str]) -> dict[str, str]:
    m = RULE.fullmatch(" ".join(argv))
    assert m, f"not an ipfw rule of the grammar we use: {argv}"
    d = m.groupdict()
    assert 0 < int(d["nr"]) < 65535 and 0 <= int(d["set"]) <= 31
    return d


def check_all(cmds: list[list[str]], sysctls: dict[str, str] | None = None) -> tuple[dict, list]:
    objs: dict[tuple[str, int], dict] = {}
    rules = []
    for argv in cmds:
        assert all(isinstance(a, str) and a and " " not in a for a in argv), argv
        if argv[1] == "-q":
            rules.append(parse_rule(argv))
        else:
            obj = parse_config(argv, sysctls or {})
            objs[(obj["kind"], obj["nr"])] = obj
    for r in rules:  # a rule uses a pipe/queue configured before it
        if r["action"] != "divert":
            assert (r["action"], int(r["arg"])) in objs, f"rule uses unconfigured {r['action']} {r['arg']}"
    return objs, rules


# --- fixtures ------------------------------------------------------------------------------


def topology(buffer_pkts: int = 125, buffer_in: str = "packets", fwd: float = 0.0, rev: float = 0.02,
             extra: dict[str, float] | None = None) -> tuple[Bottleneck, Host, dict[str, Host]]:
    hosts = {"s1": Host("s1", "sender", [Interface("vtnet1", "10.0.1.1/24", "r1", "10.0.1.2/24", 0)]),
             "s2": Host("s2", "sender", [Interface("vtnet1", "10.0.2.1/24", "r1", "10.0.2.2/24", 1)]),
             "r1": Host("r1", "router", [Interface("vtnet1", "10.0.1.2/24", "s1", "10.0.1.1/24", 0),
                                             Interface("vtnet2", "10.0.2.2/24", "s2", "10.0.2.1/24", 1),
                                             Interface("vtnet3", "10.0.3.1/24", "rx", "10.0.3.2/24", 2)]),
             "rx": Host("rx", "receiver", [Interface("vtnet1", "10.0.3.2/24", "r1", "10.0.3.1/24", 2)])}
    bn = Bottleneck("r1", "vtnet3", ["vtnet1", "vtnet2"], 50e6, fwd, rev, buffer_pkts, buffer_pkts * 1500,
                    "dummynet", extra or {}, buffer_in)
    return bn, hosts["r1"], hosts


def sysctl_map(bn: Bottleneck) -> dict[str, str]:
    return dict(freebsd.router_sysctls(bn))


# --- tests ---------------------------------------------------------------------------------


def test_fifo_pipe_has_rate_delay_and_queue():
    bn, r1, hosts = topology(fwd=0.005, rev=0.015)
    objs, rules = check_all(freebsd.ipfw_commands(bn, r1, hosts), sysctl_map(bn))
    fwd = objs[("pipe", freebsd.PIPE_FORWARD)]
    assert fwd["bw"] == 50_000_000 and fwd["delay_ms"] == 5
    assert fwd["queue"] == (125, "slots")  # > 100 slots: the sysctl below raises the limit
    assert sysctl_map(bn)["net.inet.ip.dummynet.pipe_slot_limit"] == "125"
    assert objs[("pipe", freebsd.PIPE_REVERSE)]["delay_ms"] == 15
    assert {r["iface"]: r["arg"] for r in rules} == {
        "vtnet3": str(freebsd.PIPE_FORWARD), "vtnet1": str(freebsd.PIPE_REVERSE),
        "vtnet2": str(freebsd.PIPE_REVERSE)}
    assert all(r["set"] == str(freebsd.RULE_SET) for r in rules)


def test_a_queue_over_the_slot_limit_is_refused_by_the_model():
    """The checker itself: without the sysctl, ipfw would reject 125 slots."""
    bn, r1, hosts = topology()
    with pytest.raises(AssertionError, match="pipe_slot_limit"):
        check_all(freebsd.ipfw_commands(bn, r1, hosts), {})


def test_byte_buffer_uses_bytes_and_its_limit():
    bn, r1, hosts = topology(buffer_pkts=1000, buffer_in="bytes")
    objs, _ = check_all(freebsd.ipfw_commands(bn, r1, hosts), sysctl_map(bn))
    assert objs[("pipe", freebsd.PIPE_FORWARD)]["queue"] == (1_500_000, "bytes")
    assert sysctl_map(bn)["net.inet.ip.dummynet.pipe_byte_limit"] == "1500000"


@pytest.mark.parametrize("aqm,args,expect", [
    ("codel", {"target": "5ms", "interval": "100ms", "ecn": True},
     {"target": 5000, "interval": 100000, "ecn": True}),
    ("pie", {"target": "15ms", "tupdate": "15ms", "alpha": 0.125, "beta": 1.25, "ecn": False},
     {"target": 15000, "tupdate": 15000, "alpha": 0.125, "beta": 1.25, "noecn": True}),
])
def test_flowset_aqms_go_last_on_the_pipe(aqm, args, expect):
    bn, r1, hosts = topology(buffer_pkts=100)
    cmds = freebsd.ipfw_commands(bn, r1, hosts, aqm, args)
    objs, _ = check_all(cmds, sysctl_map(bn))
    pipe = objs[("pipe", freebsd.PIPE_FORWARD)]
    assert pipe["aqm"] == aqm and pipe["aqm_params"] == expect
    assert pipe["queue"] == (100, "slots")


@pytest.mark.parametrize("aqm", ["fq_codel", "fq_pie"])
def test_fq_schedulers_sit_between_pipe_and_queue(aqm):
    bn, r1, hosts = topology(buffer_pkts=300)
    cmds = freebsd.ipfw_commands(bn, r1, hosts, aqm, {"target": "5ms", "quantum": 1514, "flows": 1024,
                                                      "ecn": True})
    objs, rules = check_all(cmds, sysctl_map(bn))
    n = freebsd.PIPE_FORWARD
    sched = objs[("sched", n)]
    assert sched["pipe"] == n and sched["aqm"] == aqm
    assert sched["aqm_params"] == {"target": 5000, "quantum": 1514.0, "flows": 1024.0, "ecn": True,
                                   "limit": 300.0}  # the testbed's buffer as the scheduler's limit
    assert objs[("queue", n)]["sched"] == n
    assert [r["action"] for r in rules if r["iface"] == "vtnet3"] == ["queue"]
    assert cmds.index(["ipfw", "pipe", str(n), "config", "bw", "50Mbit/s", "delay", "0"]) < \
        cmds.index(next(c for c in cmds if c[1] == "sched"))


def test_divert_datapath_diverts_then_delays():
    bn, r1, hosts = topology(fwd=0.010)
    cmds = freebsd.ipfw_commands(bn, r1, hosts, "divert", {"policy": "dualpi2", "target": "15ms"})
    objs, rules = check_all(cmds, sysctl_map(bn))
    div = [r for r in rules if r["action"] == "divert"]
    assert div and div[0]["arg"] == str(freebsd.DIVERT_PORT) and div[0]["iface"] == "vtnet3"
    fwd_rule = next(r for r in rules if r["action"] == "pipe" and r["iface"] == "vtnet3")
    assert int(div[0]["nr"]) < int(fwd_rule["nr"])  # reinjected packets resume after the divert
    assert "bw" not in objs[("pipe", freebsd.PIPE_FORWARD)]  # the userspace link shapes
    assert ["kldload", "-n", "ipdivert"] in freebsd.module_commands("divert")


def test_extra_access_delays_get_pipes_per_pair():
    bn, r1, hosts = topology(rev=0.010, extra={"10.0.1.1": 0.005})
    objs, rules = check_all(freebsd.ipfw_commands(bn, r1, hosts), sysctl_map(bn))
    pair = next(r for r in rules if r["dst"] == "10.0.1.1")
    assert pair["src"] == "10.0.3.2" and pair["iface"] == "vtnet1"
    assert objs[("pipe", int(pair["arg"]))]["delay_ms"] == 20  # 10 ms + 2 x 5 ms, as the delay line
    generic = [r for r in rules if r["dst"] == "any" and r["iface"] != "vtnet3"]
    assert min(int(r["nr"]) for r in generic) > int(pair["nr"])  # the specific rule matches first


@pytest.mark.parametrize("call,msg", [
    (lambda: freebsd.delay_ms(0.0025, "x"), "whole milliseconds"),
    (lambda: freebsd.bw_token(3e9), "dummynet rates"),
    (lambda: freebsd.aqm_tokens("codel", {"quantum": 1}), "codel has no parameter 'quantum'"),
    (lambda: freebsd.aqm_tokens("pie", {"target": "5 ms"}), "expected a time"),
    (lambda: freebsd.aqm_tokens("fq_codel", {"flows": "-1"}), "whole number"),
    (lambda: freebsd.aqm_tokens("pie", {"ecn": "yes"}), "true or false"),
    (lambda: freebsd.aqm_tokens("cake", {}), "unknown FreeBSD aqm"),
    (lambda: freebsd.cc_name("bbr"), "no FreeBSD counterpart"),
])
def test_bad_values_are_refused_before_they_reach_a_router(call, msg):
    with pytest.raises(UserError, match=msg):
        call()


def test_bw_tokens_are_exact():
    assert freebsd.bw_token(50e6) == "50Mbit/s"
    assert freebsd.bw_token(1.5e6) == "1500Kbit/s"
    assert freebsd.bw_token(1e9) == "1Gbit/s"
    assert freebsd.bw_token(123457) == "123457bit/s"
    for rate in (50e6, 1.5e6, 123457, 2e9):
        assert read_bandwidth(freebsd.bw_token(rate)) == int(rate)


SYSCTL = re.compile(r"^(?P<key>[a-z][a-z0-9_]*(\.[a-z0-9_]+)+)=(?P<value>[^\s=]+)$")
KNOWN_OIDS = {"net.inet.tcp.cc.algorithm", "net.inet.tcp.ecn.enable", "net.inet.ip.forwarding",
              "net.inet.ip.fw.one_pass", "net.inet.ip.dummynet.pipe_slot_limit",
              "net.inet.ip.dummynet.pipe_byte_limit"}


def test_sysctl_commands_are_sysctl8_assignments():
    bn, _, _ = topology(buffer_pkts=500)
    pairs = freebsd.endpoint_sysctls("reno", 1) + freebsd.router_sysctls(bn)
    for key, value in pairs:
        argv = freebsd.sysctl_command(key, value)
        assert argv[0] == "sysctl" and len(argv) == 2
        m = SYSCTL.fullmatch(argv[1])
        assert m and m["key"] in KNOWN_OIDS, argv
    d = dict(pairs)
    assert d["net.inet.tcp.cc.algorithm"] == "newreno" and d["net.inet.tcp.ecn.enable"] == "1"
    assert d["net.inet.ip.forwarding"] == "1" and d["net.inet.ip.fw.one_pass"] == "1"
    assert freebsd.cc_module_commands("dctcp", ["newreno", "cubic"]) == [["kldload", "-n", "cc_dctcp"]]
    assert freebsd.cc_module_commands("cubic", ["newreno", "cubic"]) == []


def test_modules_load_ipfw_without_locking_the_session_out():
    cmds = freebsd.module_commands()
    assert cmds[0] == ["kenv", "net.inet.ip.fw.default_to_accept=1"]
    assert cmds.index(["kldload", "-n", "ipfw"]) > 0


def test_teardown_deletes_exactly_what_was_added():
    bn, r1, hosts = topology(rev=0.010, extra={"10.0.1.1": 0.005, "10.0.2.1": 0.001})
    for aqm in ("fifo", "fq_codel", "divert"):
        cmds = freebsd.ipfw_commands(bn, r1, hosts, aqm)
        down = freebsd.teardown_commands(cmds)
        objs, rules = check_all(cmds, sysctl_map(bn))
        assert sorted(c[3] for c in down if c[1] == "-q") == sorted(r["nr"] for r in rules)
        assert sorted((c[1], int(c[3])) for c in down if c[1] != "-q") == sorted(objs)
        first_obj = next(i for i, c in enumerate(down) if c[1] != "-q")
        assert all(c[1] == "-q" for c in down[:first_obj])  # rules go before what they use
        for c in down:  # `ipfw {pipe|queue|sched} delete N`, `ipfw -q delete N` (ipfw(8))
            assert c[0] == "ipfw" and (c[1:3] == ["-q", "delete"] or c[2] == "delete") and c[3].isdigit()
