"""Packet capture: tcpdump on chosen interfaces of a testbed's hosts, headers only.

    with Capture(testbed, run_dir):          # every sender's egress and the receivers' ingress
        workloads.run_flows(testbed, scenario, run_dir)

writes run_dir/pcap/<host>-<iface>.pcap. tcpdump writes where its host keeps outputs
(Testbed.workdir: the run directory itself for namespaces, a directory on the host for remote
machines), and stop() brings the pcaps back into run_dir/pcap. tcpdump starts (and is seen
listening) before the block runs, and is stopped with SIGINT afterwards, so it flushes and
reports its drop counts (in `stats`; its stderr is kept as logs/tcpdump-<host>-<iface>.log).
Points are 'host:iface', 'host' (all of its interfaces) or (host, iface) pairs.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.errors import UserError
from orchestrator.testbed.base import Testbed

READY_TIMEOUT_S = 10.0
BUFFER_KIB = 8192  # -B: the kernel buffer, so a 200 Mbit/s burst is not dropped at 128 bytes


class Capture:
    def __init__(self, testbed: Testbed, out_dir: str | Path, points: list[Any] | None = None,
                 snaplen: int = 128) -> None:
        self.testbed = testbed
        self.out_dir = Path(out_dir)
        self.snaplen = snaplen
        self.points = resolve(testbed, points)
        self.procs: dict[tuple[str, str], subprocess.Popen] = {}
        self.remote: dict[str, str] = {}  # host -> where its tcpdumps write
        self.stats: dict[str, dict[str, int]] = {}

    def pcap(self, host: str, iface: str) -> Path:
        return self.out_dir / "pcap" / f"{host}-{iface}.pcap"

    def _log(self, host: str, iface: str) -> Path:
        return self.out_dir / "logs" / f"tcpdump-{host}-{iface}.log"

    def start(self) -> Capture:
        (self.out_dir / "pcap").mkdir(parents=True, exist_ok=True)
        (self.out_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for host, iface in self.points:
                if host not in self.remote:
                    self.remote[host] = self.testbed.workdir(host, self.out_dir / "pcap")
                # --immediate-mode: without it tcpdump hands packets over in blocks and a SIGINT
                # loses the block in flight (2% of a 2 s flow was seen missing)
                argv = ["tcpdump", "-n", "-U", "--immediate-mode", "-s", str(self.snaplen),
                        "-B", str(BUFFER_KIB), "-i", iface, "-w",
                        f"{self.remote[host]}/{self.pcap(host, iface).name}"]
                # its stderr (the log) comes to this machine, through ssh for remote hosts
                with open(self._log(host, iface), "wb") as err:
                    self.procs[(host, iface)] = self.testbed.popen(host, argv, tag="tcpdump", stderr=err)
            for (host, iface), proc in self.procs.items():
                self._wait_listening(host, iface, proc)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, host: str, iface: str, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        log = self._log(host, iface)
        while b"listening on" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise UserError(f"tcpdump on {host}:{iface} did not start: "
                                f"{log.read_text(errors='replace').strip()[-400:]}")
            time.sleep(0.02)

    def stop(self) -> dict[str, dict[str, int]]:
        """SIGINT every tcpdump (it flushes), wait, and collect its counts. Idempotent."""
        for (host, iface), proc in list(self.procs.items()):
            self.testbed.stop(proc, sig=signal.SIGINT, timeout=5)
            self.stats[f"{host}:{iface}"] = _counts(self._log(host, iface).read_text(errors="replace"))
            del self.procs[(host, iface)]
        failed = []
        for host, remote in list(self.remote.items()):
            del self.remote[host]
            try:
                self.testbed.fetch(host, remote, self.out_dir / "pcap")
            except UserError as e:  # bring back the other hosts' pcaps all the same
                failed.append(str(e))
        if failed:
            raise UserError("could not bring the pcaps back: " + "; ".join(failed))
        return self.stats

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def default_points(testbed: Testbed) -> list[tuple[str, str]]:
    """Every sender's interfaces (its egress) and every receiver's (its ingress)."""
    return [(h.name, i.name) for h in testbed.hosts.values() if h.role in ("sender", "receiver")
            for i in h.interfaces]


def resolve(testbed: Testbed, points: list[Any] | None) -> list[tuple[str, str]]:
    if points is None:
        return default_points(testbed)
    out: list[tuple[str, str]] = []
    for point in points:
        if isinstance(point, str):
            host, _, iface = point.partition(":")
        else:
            host, iface = point
        h = testbed.host(host)
        names = [i.name for i in h.interfaces]
        if iface and iface not in names:
            raise UserError(f"capture point {host}:{iface}: {host} has no interface {iface!r} "
                            f"(it has: {', '.join(names)})")
        out += [(host, iface)] if iface else [(host, n) for n in names]
    return list(dict.fromkeys(out))


def _counts(log: str) -> dict[str, int]:
    out = {}
    for key, pattern in (("captured", r"(\d+) packets? captured"), ("received", r"(\d+) packets? received"),
                         ("dropped", r"(\d+) packets? dropped by kernel")):
        m = re.search(pattern, log)
        if m:
            out[key] = int(m.group(1))
    return out
