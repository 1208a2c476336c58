"""A testbed whose hosts share this machine: its files and its process table (the netns
provider). The provider-neutral base leaves these to each provider."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.testbed.base import Testbed, is_same_process


class LocalTestbed(Testbed):
    """Hosts see this filesystem and their processes are this machine's: no copies, and
    processes are signalled by process group."""

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> int:
        """Stop a process started with popen, forget it, and return its exit code."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes = [p for p in self.processes if p.pid != proc.pid]
        self.save()
        return proc.returncode

    def workdir(self, host: str, local_dir: str | Path) -> str:
        """Where a process on `host` should write outputs that belong in `local_dir`."""
        return str(local_dir)

    def collect(self, host: str, remote_dir: str, local_dir: str | Path) -> list[Path]:
        """Copy what `host` wrote under remote_dir (from workdir) into local_dir; returns the
        files copied (none when they already are local)."""
        return []

    def put(self, host: str, path: str, data: str | bytes, mode: int = 0o600) -> None:
        """Write a file on host (parents made); here the host sees this filesystem."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)

    def shares_files(self, host: str) -> bool:
        """True if host sees this machine's filesystem (outputs need no copying)."""
        return True

    def signal(self, proc: subprocess.Popen, sig: int) -> None:
        """Send sig to a process started with popen, without waiting (e.g. SIGINT to iperf3)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop_tagged(self, tag: str, timeout: float = 5.0) -> None:
        """Stop every process recorded with `tag` (also ones another process started), wait
        until each is gone, and forget them."""
        for proc in [p for p in self.processes if p.tag == tag]:
            if not is_same_process(proc):
                continue  # gone, or its pid now belongs to another process
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            _wait_gone(proc.pid, timeout)
        self.processes = [p for p in self.processes if p.tag != tag]
        self.save()

    def python(self, host: str) -> str:
        """This interpreter: the hosts share this machine and this checkout."""
        return sys.executable


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait until pid has exited (e.g. its NFQUEUE queues are only free then), else kill it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
