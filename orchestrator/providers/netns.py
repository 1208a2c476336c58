"""The local provider: every host is a network namespace on this machine (mininet-like).

Kernel objects are named after the testbed, so two testbeds can be up at once:
namespaces are `tb-<testbed>-<host>`; veths are created directly inside their namespaces
(`e-<peer>`), so they never appear in the root namespace. Deleting a namespace removes its
veths, qdiscs, tc BPF programs and iptables rules with it; `down` also kills what runs in it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.bottleneck import shaping as link
from orchestrator.errors import UserError
from orchestrator.providers import features as kernel
from orchestrator.providers import teardown
from orchestrator.spec.names import is_testbed_name
from orchestrator.spec.schema import Spec
from orchestrator.testbed import topology
from orchestrator.testbed.base import Bottleneck, Host, Process, is_same_process
from orchestrator.testbed.local import LocalTestbed
from orchestrator.testbed.state import state_dir_of

NS_PREFIX = "tb-"


def ns_name(testbed: str, host: str) -> str:
    return f"{NS_PREFIX}{testbed}-{host}"


class NetnsTestbed(LocalTestbed):
    provider = "netns"

    def netns(self, host: str) -> str:
        """The namespace of `host` (the name says whose it is, so `down` finds it by name)."""
        return ns_name(self.name, self.host(host).name)

    def location(self, host: str) -> str:
        return self.netns(host)

    def argv_on(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(host), *argv]

    def bpffs(self) -> Path:
        path = self.state_dir / "bpffs"
        if not os.path.ismount(path):
            path.mkdir(parents=True, exist_ok=True)
            # root's alone: the default mode is 1777, which lets any user pin objects in it
            _sh(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", str(path)])
            self.add_cleanup("mount", str(path))
        return path


def _sh(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(argv), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise UserError(f"command failed: {' '.join(argv)}: {res.stderr.strip()}")
    return res


# ---------------------------------------------------------------- building


def plan(spec: Spec) -> tuple[dict[str, Host], Bottleneck]:
    """The topology with veths named `e-<peer>`; `auto` delay is netem where this kernel has it."""
    mode = spec.bottleneck.delay_mode
    if mode == "auto":
        mode = "netem" if kernel.has_qdisc("netem") else "nfqueue"
    return topology.plan(spec, lambda host, peer: f"e-{peer}", mode)


def up(spec: Spec, progress: Callable[[str], None] | None = None) -> NetnsTestbed:
    """Build the testbed. On failure everything built so far is torn down again. `progress`
    gets a short line per phase (for the CLI: a large testbed takes a while)."""
    if os.geteuid() != 0:
        raise UserError("building namespaces needs root (run as root or with sudo)")
    if (state_dir_of(spec.name) / "state.json").exists() or _namespaces(spec.name):
        raise UserError(f"a testbed named {spec.name!r} is already up; run `testbed down {spec.name}` first")
    hosts, bottleneck = plan(spec)
    tb = NetnsTestbed(spec.name, spec.model_dump(mode="json"), hosts, bottleneck,
                      extra={"buffer_spec": spec.bottleneck.buffer})
    tb.status = "building"
    tb.save()  # first, so `down` can clean up after a kill -9 in the middle of `up`
    try:
        _build(tb, spec, progress)
    except BaseException:
        down(spec.name, tb)
        raise
    tb.status = "up"
    tb.save()
    return tb


def _build(tb: NetnsTestbed, spec: Spec, progress: Callable[[str], None] | None = None) -> None:
    """Namespaces, veths, addresses and routes in a few `ip -batch` calls (one per namespace
    for its addresses and routes) and the per-host sysctl and per-interface ethtool calls in
    parallel: one `ip` process per object made `up` of 200 hosts take 111 s (issue 10)."""
    say = progress or (lambda _msg: None)
    available = kernel.available_ccs()
    for h in spec.hosts:
        if h.tcp.cc not in available:
            raise UserError(f"{spec.source}: hosts: {h.name}: tcp.cc: congestion control {h.tcp.cc!r} "
                            f"is not available here (available: {', '.join(available)})")
    say(f"namespaces: {len(spec.hosts)}")
    _batch([], [f"netns add {tb.netns(h.name)}" for h in spec.hosts])
    say(f"links: {len(spec.links)}")
    veths = []
    for lk in spec.links:
        a, b = tb.hosts[lk.a], tb.hosts[lk.b]
        veths.append(f"link add {a.iface_to(lk.b).name} netns {tb.netns(a.name)} type veth "
                     f"peer name {b.iface_to(lk.a).name} netns {tb.netns(b.name)}")
    _batch([], veths)
    say("addresses and routes")
    routes = topology.routes(spec, tb.hosts)
    for h in spec.hosts:
        host, cc = tb.hosts[h.name], ["congctl", h.tcp.cc]
        lines = ["link set lo up"]
        for iface in host.interfaces:
            net = str(ipaddress.IPv4Interface(iface.address).network)
            lines += [f"addr add {iface.address} dev {iface.name}", f"link set {iface.name} up",
                      " ".join(["route", "replace", net, "dev", iface.name, "proto", "kernel",
                                "scope", "link", "src", iface.ip, *cc])]
        lines += [" ".join(["route", "add", net, "via", via, *cc]) for net, via in routes.get(h.name, [])]
        _batch(["-n", tb.netns(h.name)], lines)
    say("sysctls and offloads")
    # A namespace may only default to a CC in the root namespace's allowed list (cubic is
    # not, on this machine), so the CC is set on every route instead (above).
    cmds = [["ip", "netns", "exec", tb.netns(h.name), "sysctl", "-q", "-w",
             "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
             f"net.ipv4.tcp_ecn={h.tcp.ecn}", f"net.ipv4.ip_forward={1 if h.role == 'router' else 0}"]
            for h in spec.hosts]
    cmds += [["ip", "netns", "exec", tb.netns(host.name), "ethtool", "-K", iface.name,
              "tso", "off", "gso", "off", "gro", "off"]
             for host in tb.hosts.values() for iface in host.interfaces]
    _parallel(cmds)
    link.install_shaper(tb)
    link.start_delay(tb)


def _batch(prefix: list[str], lines: list[str]) -> None:
    """`ip [prefix] -batch -` of `lines` (the words of each are names and addresses checked
    by the spec: no spaces or quotes). Stops at the first failing line, which it names."""
    if not lines:
        return
    res = subprocess.run(["ip", *prefix, "-batch", "-"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(f"command failed: ip {' '.join(prefix)} -batch: {res.stderr.strip()}")


def _parallel(cmds: list[list[str]], width: int = 16) -> None:
    """Run the argv lists, `width` at a time; the first failure is raised once all ended."""
    failed: list[str] = []
    for i in range(0, len(cmds), width):
        procs = [(c, subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
                 for c in cmds[i:i + width]]
        for argv, proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                failed.append(f"command failed: {' '.join(argv)}: {err.strip()}")
    if failed:
        raise UserError(failed[0])


# ---------------------------------------------------------------- tearing down


def _namespaces(name: str) -> list[str]:
    prefix = f"{NS_PREFIX}{name}-"
    out = _sh(["ip", "netns", "list"], check=False).stdout.split("\n")
    return [line.split()[0] for line in out if line.startswith(prefix)]


def leftover_names() -> set[str]:
    """Testbeds whose namespaces are still there (with or without a state file)."""
    out = _sh(["ip", "netns", "list"], check=False).stdout
    names = {line.split()[0][len(NS_PREFIX):].rsplit("-", 1)[0]
             for line in out.splitlines() if line.startswith(NS_PREFIX)}
    return {n for n in names if is_testbed_name(n)}


def down(name: str, tb: NetnsTestbed | None = None) -> list[str]:
    """Remove everything of testbed `name`; idempotent. Returns what was removed. `tb`: the
    testbed as its state file describes it, if that could be read (providers.down).

    Only what belongs to the testbed is touched: processes inside its namespaces, recorded
    processes whose pid and start time both still match, mounts inside its state folder.
    A pid read from the state file alone is never signalled (the file may be stale or planted).
    """
    removed: list[str] = []
    home = state_dir_of(name)
    state = home / "state.json"
    cleanups: list[dict[str, str]] = []
    pids: list[int] = []
    if state.exists():
        try:
            data = json.loads(state.read_text())
            cleanups = [c for c in data.get("cleanups", []) if isinstance(c, dict)]
            pids = [p["pid"] for p in data.get("processes", [])
                    if is_same_process(Process(**p))]
        except (ValueError, KeyError, TypeError):
            removed.append(f"unreadable state file {state}")
    namespaces = _namespaces(name)
    for ns in namespaces:
        pids += [int(p) for p in _sh(["ip", "netns", "pids", ns], check=False).stdout.split()]
    _kill(pids, removed)
    # what lives in the namespaces (tc filters, ip rules) goes with them; the records that
    # reach outside (struct_ops, mounts) are undone here
    teardown.replay(tb, cleanups, home, removed, local_only=True)
    for ns in namespaces:
        _sh(["ip", "netns", "del", ns], check=False)
        removed.append(f"namespace {ns}")
    bpffs = home / "bpffs"
    if os.path.ismount(bpffs):
        _sh(["umount", str(bpffs)], check=False)
        removed.append(f"mount {bpffs}")
    if home.exists():
        _sh(["rm", "-rf", "--one-file-system", "--", str(home)], check=False)
    return removed


def _kill(pids: list[int], removed: list[str]) -> None:
    pids = sorted(set(pids))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        if not alive:
            return
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(_alive(p) for p in alive):
            time.sleep(0.02)
        removed.extend(f"process {p}" for p in alive if sig == signal.SIGTERM)
        pids = [p for p in alive if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours is as good as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


TESTBED = NetnsTestbed
