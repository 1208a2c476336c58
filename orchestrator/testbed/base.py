"""A testbed that is up: its hosts, links and the processes it runs.

Workloads, capture and datapaths only talk to this class, so they do not care whether hosts
are network namespaces on this machine or real machines over SSH. What is up is kept in a
state file under STATE_ROOT/<name>/state.json, so `testbed down` works from another shell
and after the orchestrator was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import strictjson
from orchestrator.errors import UserError
from orchestrator.spec.names import testbed_name

STATE_ROOT = Path(os.environ.get("TESTBED_STATE_DIR", "/run/testbed"))


def state_dir_of(name: str) -> Path:
    """STATE_ROOT/<name> for a valid testbed name; never a path outside STATE_ROOT (a name
    like '../victim' or a planted symlink is refused), because `down` deletes this folder."""
    path = STATE_ROOT / testbed_name(name)
    root = STATE_ROOT.resolve()
    if path.is_symlink() or path.resolve().parent != root:
        raise UserError(f"testbed {name!r}: its state folder {path} is not inside {root}; refusing it")
    return path


@dataclass
class Interface:
    name: str  # the interface name inside the host
    address: str  # CIDR, e.g. 10.0.1.1/24
    peer: str  # host at the other end
    peer_address: str
    link: int  # index into spec.links

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def peer_ip(self) -> str:
        return self.peer_address.split("/")[0]


@dataclass
class Host:
    name: str
    role: str
    interfaces: list[Interface] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The host's main IPv4 address (of its first interface)."""
        return self.interfaces[0].ip

    def iface_to(self, peer: str) -> Interface:
        return next(i for i in self.interfaces if i.peer == peer)


@dataclass
class Bottleneck:
    router: str  # host that shapes
    egress: str  # interface on the router towards the receivers (shaped)
    ingress: list[str]  # the router's other interfaces (towards the senders)
    rate_bps: float
    forward_delay_s: float
    reverse_delay_s: float
    buffer_pkts: int
    buffer_bytes: int
    delay_mode: str  # 'netem' or 'nfqueue'
    # per-host extra one-way delay (access links), by IP address
    extra_delay_s: dict[str, float] = field(default_factory=dict)
    buffer_in: str = "packets"  # how the spec gave the buffer: 'packets' or 'bytes'

    @property
    def rtt_s(self) -> float:
        return self.forward_delay_s + self.reverse_delay_s


@dataclass
class Process:
    host: str
    pid: int
    argv: list[str]
    tag: str  # what it is: 'delayline', 'iperf3-server', 'tcpdump', ...
    # the process's start time in clock ticks since boot (/proc/PID/stat field 22): with the
    # pid it names this process and no other, so a pid reused later is never signalled
    start: int = 0


def sysctl_argv(key: str, value: str | int, os_: str = "linux") -> list[str]:
    """The command that sets a sysctl: Linux's sysctl needs -w (-q: quiet), FreeBSD's not."""
    return [*(["sysctl", "-q", "-w"] if os_ == "linux" else ["sysctl"]), f"{key}={value}"]


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in ticks since boot), or None if pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_same_process(proc: Process) -> bool:
    """True only if the recorded process still runs: same pid and same start time. A record
    without a start time (or with a planted pid) is never trusted."""
    return proc.start > 0 and start_time(proc.pid) == proc.start


class Testbed:
    """Runs commands on hosts. Subclasses (providers) say how."""

    provider = "base"

    def __init__(self, name: str, spec: dict[str, Any], hosts: dict[str, Host],
                 bottleneck: Bottleneck, extra: dict[str, Any] | None = None) -> None:
        self.name = name
        self.spec_data = spec  # the validated spec as plain data (model_dump)
        self.hosts = hosts
        self.bottleneck = bottleneck
        self.processes: list[Process] = []
        self.cleanups: list[dict[str, str]] = []  # things `down` must undo, like struct_ops
        self.extra = extra or {}
        self.status = "up"

    # ---- where state lives
    @property
    def state_dir(self) -> Path:
        return state_dir_of(self.name)

    def save(self) -> None:
        # the state names processes and paths of this testbed: root's alone (0700/0600)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {
            "name": self.name, "provider": self.provider, "status": self.status,
            "spec": self.spec_data,
            "hosts": {k: asdict(v) for k, v in self.hosts.items()},
            "bottleneck": asdict(self.bottleneck),
            "processes": [asdict(p) for p in self.processes],
            "cleanups": self.cleanups, "extra": self.extra,
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.touch(mode=0o600)
        tmp.chmod(0o600)
        tmp.write_text(strictjson.dumps(data, indent=1))
        os.replace(tmp, self.state_dir / "state.json")

    # ---- running things
    def argv_on(self, host: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` on `host` from this machine."""
        raise NotImplementedError

    def run(self, host: str, argv: Sequence[str], check: bool = True,
            timeout: float | None = 60, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command on a host and wait. Raises UserError when check and it fails."""
        full = self.argv_on(host, argv)
        try:
            res = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired:
            raise UserError(f"{host}: timed out after {timeout}s: {' '.join(argv)}") from None
        if check and res.returncode != 0:
            raise UserError(f"{host}: command failed ({res.returncode}): {' '.join(argv)}: "
                            f"{res.stderr.strip()[-500:]}")
        return res

    def popen(self, host: str, argv: Sequence[str], tag: str, stdout: Any = subprocess.DEVNULL,
              stderr: Any = subprocess.DEVNULL, **kw: Any) -> subprocess.Popen:
        """Start a background process on a host; it is recorded so `down` can stop it."""
        proc = subprocess.Popen(self.argv_on(host, argv), stdout=stdout, stderr=stderr,
                                start_new_session=True, **kw)
        self.processes.append(Process(host, proc.pid, list(argv), tag, start_time(proc.pid) or 0))
        self.save()
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> int:
        """Stop a process started with popen, forget it, and return its exit code."""
        raise NotImplementedError

    def add_cleanup(self, kind: str, value: str) -> None:
        """Remember something `down` must undo (kinds are handled by the provider)."""
        self.cleanups.append({"kind": kind, "value": value})
        self.save()

    def remove_cleanup(self, kind: str, value: str) -> None:
        self.cleanups = [c for c in self.cleanups if c != {"kind": kind, "value": value}]
        self.save()

    # ---- files on hosts
    def workdir(self, host: str, local_dir: str | Path) -> str:
        """Where a process on `host` should write outputs that belong in `local_dir`."""
        raise NotImplementedError

    def collect(self, host: str, remote_dir: str, local_dir: str | Path) -> list[Path]:
        """Copy what `host` wrote under remote_dir (from workdir) into local_dir; returns the
        files copied (none when they already are local)."""
        raise NotImplementedError

    def fetch(self, host: str, remote_dir: str, local_dir: str | Path) -> list[Path]:
        """collect(), then remove remote_dir on the host, so a long sweep does not fill a
        remote disk (nothing is removed where remote_dir is local_dir itself)."""
        files = self.collect(host, remote_dir, local_dir)
        if Path(remote_dir).resolve() != Path(local_dir).resolve():
            self.run(host, ["rm", "-rf", remote_dir], check=False)
        return files

    def put(self, host: str, path: str, data: str | bytes, mode: int = 0o600) -> None:
        """Write a file on host (parents made)."""
        raise NotImplementedError

    def shares_files(self, host: str) -> bool:
        """True if host sees this machine's filesystem (outputs need no copying)."""
        raise NotImplementedError

    def signal(self, proc: subprocess.Popen, sig: int) -> None:
        """Send sig to a process started with popen, without waiting (e.g. SIGINT to iperf3)."""
        raise NotImplementedError

    def stop_tagged(self, tag: str, timeout: float = 5.0) -> None:
        """Stop every process recorded with `tag` (also ones another process started), wait
        until each is gone, and forget them."""
        raise NotImplementedError

    def python(self, host: str) -> str:
        """The interpreter (with this project importable) that runs `python -m orchestrator...`
        on host."""
        raise NotImplementedError

    def location(self, host: str) -> str:
        """Where `host` is, for `testbed status` (a namespace, user@address)."""
        return ""

    # ---- convenience
    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise UserError(f"no host {name!r} in testbed {self.name!r} "
                            f"(hosts: {', '.join(self.hosts)})") from None

    def os_of(self, host: str) -> str:
        """The host's operating system: 'linux' unless a provider knows otherwise."""
        return "linux"

    def sysctl(self, host: str, key: str, value: str | int) -> None:
        self.run(host, sysctl_argv(key, value, self.os_of(host)))

    def spec(self) -> Any:
        from orchestrator.spec.schema import Spec

        return Spec.model_validate(self.spec_data)

    def bpffs(self) -> Path:
        """A bpffs mount of this testbed's own, for pinning maps and programs."""
        raise NotImplementedError

    def wait_port(self, host: str, port: int, timeout: float = 5.0) -> None:
        """Wait until a TCP port listens on host."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run(host, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise UserError(f"{host}: nothing listens on port {port} after {timeout}s")
