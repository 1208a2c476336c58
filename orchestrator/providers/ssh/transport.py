"""The ssh provider's transport: commands, processes and files on existing machines.

Commands run through the OpenSSH client with host keys verified against the spec's
known_hosts (StrictHostKeyChecking=yes), BatchMode (never a password prompt) and a short
ConnectTimeout; the remote command is `shlex.join` of the argument list. One multiplexed
connection per host (ControlMaster) serves `run`; each `popen` gets a connection of its own,
and a small remote wrapper stops the process when that connection goes away, so a killed
controller leaves nothing running. Files come back over SFTP (paramiko, see connect).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.errors import UserError
from orchestrator.providers.ssh.connect import connect
from orchestrator.providers.ssh.settings import (
    REPO,
    Endpoint,
    control_dir,
    endpoint,
    project_dir,
    project_python,
    remote_dir,
    settings_of,
    ssh_options,
)
from orchestrator.spec.ssh import SshSettings
from orchestrator.testbed.base import Process, Testbed, start_time

# The remote side of popen. Runs the command in the background, writes its pid, and stops it
# (SIGTERM) when the sshd session that started it is gone, i.e. when the controller's ssh
# client died or the connection broke. `exec` makes sshd's session process our parent.
# The command keeps ssh's stdin (a background job would get /dev/null): a caller may write to it.
# If the session is gone before we start (the client died while the login shell was still
# reading its rc files), the parent is no longer sshd: do not start at all.
WRAPPER = ('case "$(ps -o comm= -p "$PPID" 2>/dev/null)" in sshd*) ;; *) exit 255;; esac; '
           'pidf=$1; dir=$2; shift 2; if [ -n "$dir" ] && [ -d "$dir" ]; then cd "$dir"; fi; '
           'mkdir -p "${pidf%/*}"; exec 3<&0; "$@" <&3 3<&- & c=$!; exec 3<&-; echo "$c" > "$pidf"; '
           '( while kill -0 "$PPID" 2>/dev/null; do sleep 0.5; done; kill -TERM "$c" 2>/dev/null ) '
           '>/dev/null 2>&1 </dev/null & w=$!; '
           'wait "$c"; rc=$?; kill "$w" 2>/dev/null; rm -f "$pidf"; exit "$rc"')

# TERM the pid in each pid file, wait ($1 ticks of 50 ms) until it is gone, then KILL it.
# Stdlib shell only: the same on Linux and FreeBSD.
STOP_BY_PIDFILE = ('n=$1; shift; for f in "$@"; do p=$(cat "$f" 2>/dev/null) || continue; '
                   'kill -TERM "$p" 2>/dev/null || { rm -f "$f"; continue; }; i=0; '
                   'while kill -0 "$p" 2>/dev/null && [ "$i" -lt "$n" ]; do sleep 0.05; i=$((i+1)); done; '
                   'kill -0 "$p" 2>/dev/null && kill -KILL "$p"; rm -f "$f"; done; exit 0')


class SshTestbed(Testbed):
    provider = "ssh"

    # ---- who and where
    def endpoint(self, host: str) -> Endpoint:
        self.host(host)  # a clear error for an unknown host
        return endpoint(self.spec(), host)

    def settings(self) -> SshSettings:
        return settings_of(self.spec())

    def host_dir(self, host: str) -> str:
        return remote_dir(self.settings(), self.name, host)

    def control_path(self, host: str) -> Path:
        return control_dir(self.name) / host

    # ---- running things
    def ssh_argv(self, host: str, multiplexed: bool = True) -> list[str]:
        ep = self.endpoint(host)
        mux = ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control_path(host)}"] \
            if multiplexed else ["-o", "ControlPath=none"]
        return ["ssh", "-T", *ssh_options(self.settings(), ep), *mux, "-p", str(ep.port),
                "-l", ep.user, "--", ep.address]

    def argv_on(self, host: str, argv: Sequence[str]) -> list[str]:
        return [*self.ssh_argv(host), shlex.join(list(argv))]

    def run(self, host: str, argv: Sequence[str], check: bool = True,
            timeout: float | None = 60, input: str | None = None) -> subprocess.CompletedProcess:
        """As Testbed.run; ssh's own failures (exit 255: unreachable, key, host key) say so."""
        full = self.argv_on(host, argv)
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        try:
            res = subprocess.run(full, capture_output=True, text=True, timeout=timeout, **stdin)
        except subprocess.TimeoutExpired:
            raise UserError(f"{host}: timed out after {timeout}s: {shlex.join(argv)}") from None
        if check and res.returncode == 255:
            raise UserError(f"{host} ({self.endpoint(host).where}): ssh failed: "
                            f"{res.stderr.strip()[-400:] or 'connection lost'}")
        if check and res.returncode != 0:
            raise UserError(f"{host}: command failed ({res.returncode}): {shlex.join(argv)}: "
                            f"{res.stderr.strip()[-500:]}")
        return res

    def popen(self, host: str, argv: Sequence[str], tag: str, stdout: Any = subprocess.DEVNULL,
              stderr: Any = subprocess.DEVNULL, **kw: Any) -> subprocess.Popen:
        """A background process on host, over a connection of its own (see WRAPPER)."""
        argv = list(argv)
        env = kw.pop("env", None)
        if env:  # the remote side gets the variables the caller added or changed
            changed = [f"{k}={v}" for k, v in env.items() if os.environ.get(k) != v]
            argv = ["env", *changed, *argv] if changed else argv
        cwd = kw.pop("cwd", None)
        token = uuid.uuid4().hex[:12]
        pidfile = f"{self.host_dir(host)}/pids/{token}.pid"
        remote = "exec " + shlex.join(["sh", "-c", WRAPPER, "sh", pidfile, self._remote_cwd(cwd), *argv])
        kw.setdefault("stdin", subprocess.DEVNULL)  # never the controller's terminal
        proc = subprocess.Popen([*self.ssh_argv(host, multiplexed=False), remote], stdout=stdout,
                                stderr=stderr, start_new_session=True, **kw)
        self.processes.append(Process(host, proc.pid, argv, tag, start_time(proc.pid) or 0))
        self.extra.setdefault("pidfiles", {})[str(proc.pid)] = pidfile
        self.save()
        return proc

    def _remote_cwd(self, cwd: Any) -> str:
        """A local working directory as the remote host knows it (the project moves to
        project_dir; any other path is taken as is, for hosts sharing this filesystem)."""
        if cwd is None:
            return ""
        path = Path(cwd).resolve()
        if path == REPO or REPO in path.parents:
            return str(PurePosixPath(project_dir(self.settings())) / path.relative_to(REPO))
        return str(path)

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> int:
        """Signal the remote process, wait for its ssh to end; kill harder if it does not."""
        rec = next((p for p in self.processes if p.pid == proc.pid), None)
        pidfile = self.extra.get("pidfiles", {}).get(str(proc.pid))
        if proc.poll() is None and rec is not None and pidfile:
            self._signal(rec.host, pidfile, sig, proc)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(rec.host, pidfile, signal.SIGKILL, proc)
                _kill_local(proc, 2)
        elif proc.poll() is None:
            _kill_local(proc, timeout, sig)
        self.processes = [p for p in self.processes if p.pid != proc.pid]
        self.extra.get("pidfiles", {}).pop(str(proc.pid), None)
        self.save()
        return exit_code(proc.returncode)

    def _signal(self, host: str, pidfile: str, sig: int, proc: subprocess.Popen) -> None:
        """kill -s SIG the pid in pidfile; it may not be written yet just after popen."""
        name = signal.Signals(sig).name.removeprefix("SIG")
        script = 'p=$(cat "$1" 2>/dev/null) || exit 3; kill -s "$2" "$p"'
        deadline = time.monotonic() + 3
        while proc.poll() is None:
            try:
                res = self.run(host, ["sh", "-c", script, "sh", pidfile, name], check=False, timeout=10)
            except UserError:
                return
            if res.returncode != 3 or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    # ---- files
    def workdir(self, host: str, local_dir: str | Path) -> str:
        local = Path(local_dir).resolve()
        tag = hashlib.sha1(str(local).encode()).hexdigest()[:10]
        path = f"{self.host_dir(host)}/out/{tag}-{local.name}"
        self.run(host, ["mkdir", "-p", path])
        return path

    def collect(self, host: str, remote_dir: str, local_dir: str | Path) -> list[Path]:
        """Copy a remote directory tree into local_dir over SFTP; returns the files copied."""
        local = Path(local_dir)
        local.mkdir(parents=True, exist_ok=True)
        client = connect(self.spec(), host)
        try:
            return _fetch_tree(client.open_sftp(), remote_dir, local)
        finally:
            client.close()

    def put(self, host: str, path: str, data: str | bytes, mode: int = 0o600) -> None:
        """Write a file on host over SFTP (parents made), atomically by a rename."""
        self.run(host, ["mkdir", "-p", str(PurePosixPath(path).parent)])
        client = connect(self.spec(), host)
        try:
            sftp = client.open_sftp()
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            with sftp.open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, path)
        finally:
            client.close()

    def shares_files(self, host: str) -> bool:
        return False

    def signal(self, proc: subprocess.Popen, sig: int) -> None:
        """Signal the remote process itself (signalling the local ssh client would end the
        connection and lose the process's output)."""
        rec = next((p for p in self.processes if p.pid == proc.pid), None)
        pidfile = self.extra.get("pidfiles", {}).get(str(proc.pid))
        if rec is not None and pidfile and proc.poll() is None:
            self._signal(rec.host, pidfile, sig, proc)

    def stop_tagged(self, tag: str, timeout: float = 5.0) -> None:
        """As Testbed.stop_tagged, by the remote pid files: the ones popen wrote (also from
        another controller process) and the one of the playbook's daemon of that name
        (site.yml starts the delay line as daemon 'delayline')."""
        for host in self.hosts:
            files = [self.extra.get("pidfiles", {}).get(str(p.pid)) for p in self.processes
                     if p.tag == tag and p.host == host]
            files.append(f"{self.host_dir(host)}/pids/{tag}.pid")
            self.run(host, ["sh", "-c", STOP_BY_PIDFILE, "sh", str(round(timeout * 20)),
                            *[f for f in files if f]], check=False, timeout=timeout + 30)
        for proc in [p for p in self.processes if p.tag == tag]:  # the local ssh clients
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            self.extra.get("pidfiles", {}).pop(str(proc.pid), None)
        self.processes = [p for p in self.processes if p.tag != tag]
        self.save()

    def bpffs(self) -> Path:
        """A bpffs of the testbed's own on the bottleneck router (pinning only works on hosts
        of this machine's kernel, e.g. namespace hosts; real hosts need the nfqueue datapath)."""
        router = self.bottleneck.router
        path = f"{self.host_dir(router)}/bpffs"
        mounted = self.run(router, ["sh", "-c", 'grep -q " $1 bpf " /proc/mounts', "sh", path], check=False)
        if mounted.returncode != 0:
            self.run(router, ["mkdir", "-p", path])
            self.run(router, ["mount", "-t", "bpf", "-o", "mode=0700", "bpf", path])
            self.add_cleanup("remote-mount", f"{router}:{path}")
        return Path(path)

    def python(self, host: str) -> str:
        return project_python(self.settings())

    def location(self, host: str) -> str:
        return self.endpoint(host).where

    def os_of(self, host: str) -> str:
        return self.endpoint(host).os

    # ---- the multiplexed connection
    def start_master(self, host: str) -> None:
        """One background ssh per host that later commands share (about 10 ms each, not 200)."""
        path = self.control_path(host)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        ep = self.endpoint(host)
        log = self.state_dir / f"ssh-master-{host}.log"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as err:  # never a pipe: the daemonised master would hold it open
            res = subprocess.run(["ssh", "-T", "-M", "-N", "-f", *ssh_options(self.settings(), ep),
                                  "-o", f"ControlPath={path}", "-p", str(ep.port), "-l", ep.user,
                                  "--", ep.address], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=err, timeout=60)
        if res.returncode != 0:
            raise UserError(f"{host} ({ep.where}): ssh failed: {log.read_text().strip()[-400:]}")

    def stop_masters(self) -> None:
        for host in self.hosts:
            path = self.control_path(host)
            if path.exists():
                ep = self.endpoint(host)
                subprocess.run(["ssh", "-o", f"ControlPath={path}", "-O", "exit", "-p", str(ep.port),
                                "-l", ep.user, "--", ep.address], capture_output=True, timeout=10)
        shutil.rmtree(control_dir(self.name), ignore_errors=True)


def exit_code(rc: int | None) -> int:
    """ssh reports a remote death by signal N as 128+N; give it as -N, as Popen does locally."""
    if rc is not None and 129 <= rc <= 192:
        return -(rc - 128)
    return rc if rc is not None else -9


def _kill_local(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _fetch_tree(sftp: Any, remote: str, local: Path) -> list[Path]:
    out = []
    for entry in sftp.listdir_attr(remote):
        src, dst = f"{remote}/{entry.filename}", local / entry.filename
        if stat.S_ISDIR(entry.st_mode or 0):
            dst.mkdir(exist_ok=True)
            out += _fetch_tree(sftp, src, dst)
        elif stat.S_ISREG(entry.st_mode or 0):
            sftp.get(src, str(dst))
            out.append(dst)
    return out


