"""The ssh provider: hosts are existing machines (cloud VMs, a lab, a FreeBSD router) reached
over SSH and set up with Ansible (playbooks/, through ansible-runner).

Commands run through the OpenSSH client with host keys verified against the spec's
known_hosts (StrictHostKeyChecking=yes), BatchMode (never a password prompt) and a short
ConnectTimeout; the remote command is `shlex.join` of the argument list. One multiplexed
connection per host (ControlMaster) serves `run`; each `popen` gets a connection of its own,
and a small remote wrapper stops the process when that connection goes away, so a killed
controller leaves nothing running. paramiko does the quick checks (reachable? right key?
known host key?) with typed errors, and copies files back (SFTP).

Secrets: the spec, the state file, the inventory and the manifests hold paths to keys, never
key material; password authentication is not supported on purpose (use keys or ssh-agent).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.errors import UserError
from orchestrator.spec.schema import Spec, SshSettings
from orchestrator.testbed.base import (
    Bottleneck,
    Host,
    Interface,
    Process,
    Testbed,
    is_same_process,
    start_time,
    state_dir_of,
)

REPO = Path(__file__).resolve().parents[3]
SERVER_ALIVE = ("-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3")  # lost host: ~6 s

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


@dataclass(frozen=True)
class Endpoint:
    host: str
    address: str
    port: int
    user: str
    key_file: str | None  # expanded path, or None for ssh-agent / default keys
    os: str

    @property
    def where(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


def settings_of(spec: Spec) -> SshSettings:
    return spec.ssh or SshSettings()


def endpoint(spec: Spec, host: str) -> Endpoint:
    hs = spec.host(host)
    s = settings_of(spec)
    assert hs.ssh is not None
    key = hs.ssh.key_file or s.key_file
    return Endpoint(host, hs.ssh.address, hs.ssh.port or s.port, hs.ssh.user or s.user,
                    os.path.expanduser(key) if key else None, hs.ssh.os)


def known_hosts(s: SshSettings) -> str:
    return "/dev/null" if s.insecure_ignore_host_keys else os.path.expanduser(s.known_hosts)


def ssh_options(s: SshSettings, ep: Endpoint) -> list[str]:
    """The -o options every ssh (and Ansible's) connection uses."""
    opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, round(s.connect_timeout_s))}",
            "-o", f"UserKnownHostsFile={known_hosts(s)}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=" + ("no" if s.insecure_ignore_host_keys else "yes"),
            "-o", "LogLevel=ERROR", *SERVER_ALIVE]
    if ep.key_file:
        opts += ["-o", "IdentitiesOnly=yes", "-i", ep.key_file]
    return opts


def remote_dir(s: SshSettings, testbed: str, host: str) -> str:
    return str(PurePosixPath(s.remote_dir) / testbed / host)


def project_dir(s: SshSettings) -> str:
    return s.project_dir or str(REPO)


def project_python(s: SshSettings) -> str:
    if s.project_python:
        return s.project_python
    if s.install_project:  # the playbook makes this venv
        return str(PurePosixPath(project_dir(s)) / ".venv" / "bin" / "python")
    return sys.executable


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
            self.run(router, ["mount", "-t", "bpf", "bpf", path])
            self.add_cleanup("remote-mount", f"{router}:{path}")
        return Path(path)

    def python(self, host: str) -> str:
        return project_python(self.settings())

    def sysctl(self, host: str, key: str, value: str | int) -> None:
        if self.endpoint(host).os == "freebsd":
            self.run(host, ["sysctl", f"{key}={value}"])
        else:
            super().sysctl(host, key, value)

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


def control_dir(testbed: str) -> Path:
    """Unix socket paths are limited to about 100 bytes: use the state dir if short enough."""
    path = state_dir_of(testbed) / "cm"
    if len(str(path)) > 60:
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        path = Path(f"/tmp/tbcm-{os.getuid()}-{digest}")
    return path


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


# ---------------------------------------------------------------- checking hosts (paramiko)


def fingerprint(key: Any) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def connect(spec: Spec, host: str) -> Any:
    """A paramiko client connected to host with the spec's key and host-key policy; any
    failure is a UserError that names the host and says what is wrong and what to do."""
    import paramiko

    s, ep = settings_of(spec), endpoint(spec, host)
    timeout = s.connect_timeout_s
    if ep.key_file and not os.path.isfile(ep.key_file):
        raise UserError(f"{host}: key file {ep.key_file} does not exist")
    client = paramiko.SSHClient()
    if s.insecure_ignore_host_keys:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # kept in memory only
    else:
        kh = known_hosts(s)
        if not os.path.isfile(kh):
            raise UserError(f"{host}: known_hosts file {kh} does not exist; record the hosts' keys "
                            f"(ssh-keyscan, and check the fingerprints out of band), or set "
                            f"ssh.insecure_ignore_host_keys: true for a throwaway lab")
        client.load_host_keys(kh)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(ep.address, port=ep.port, username=ep.user, key_filename=ep.key_file,
                       look_for_keys=ep.key_file is None, allow_agent=ep.key_file is None,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout)
    except Exception as e:  # noqa: BLE001 - every failure becomes one clear line
        client.close()
        raise UserError(f"{host} ({ep.where}): {_why(e, s, ep, timeout)}") from None
    return client


def _why(e: Exception, s: SshSettings, ep: Endpoint, timeout: float) -> str:
    import paramiko

    kh = known_hosts(s)
    entry = ep.address if ep.port == 22 else f"[{ep.address}]:{ep.port}"
    if isinstance(e, paramiko.BadHostKeyException):
        return (f"host key CHANGED: {kh} records {fingerprint(e.expected_key)}, the host offers "
                f"{fingerprint(e.key)}. Someone may be intercepting the connection, or the host was "
                f"reinstalled; if you trust the new key: ssh-keygen -R '{entry}' -f {kh}")
    if isinstance(e, paramiko.AuthenticationException):
        key = f"key {ep.key_file}" if ep.key_file else "ssh-agent or default keys"
        return (f"authentication failed for user {ep.user!r} with {key} "
                f"(is its public key in authorized_keys?)")
    if isinstance(e, paramiko.PasswordRequiredException):
        return f"key file {ep.key_file} is encrypted: add it to ssh-agent and leave key_file out"
    if isinstance(e, paramiko.SSHException) and "not found in known_hosts" in str(e):
        return (f"host key unknown: {entry} is not in {kh}; record it (ssh-keyscan, and check the "
                f"fingerprint out of band), or set ssh.insecure_ignore_host_keys: true for a throwaway lab")
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"unreachable: no answer within {timeout:g} s"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        return "unreachable: connection refused (is sshd running on that port?)"
    if isinstance(e, OSError):
        return f"unreachable: {e.strerror or e}"
    if isinstance(e, paramiko.SSHException):
        return f"ssh handshake failed: {e}"
    return f"{type(e).__name__}: {e}"


def check_hosts(tb: SshTestbed) -> dict[str, str]:
    """Connect to every host at once; fail with every problem listed. Returns uname -s."""
    spec = tb.spec()

    def one(host: str) -> str:
        client = connect(spec, host)
        try:
            _, out, _ = client.exec_command("uname -s", timeout=spec.ssh.connect_timeout_s if spec.ssh else 5)
            return out.read().decode().strip()
        finally:
            client.close()

    results: dict[str, str] = {}
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=min(16, len(tb.hosts))) as pool:
        futures = {h: pool.submit(one, h) for h in tb.hosts}
        for host, fut in futures.items():
            try:
                results[host] = fut.result()
            except UserError as e:
                errors.append(str(e))
    for host, system in results.items():
        want = {"linux": "Linux", "freebsd": "FreeBSD"}[endpoint(spec, host).os]
        if system != want:
            errors.append(f"{host}: the spec says os {endpoint(spec, host).os!r}, "
                          f"but the host runs {system!r}")
    if errors:
        raise UserError("cannot use the hosts:\n  " + "\n  ".join(errors))
    return results


# ---------------------------------------------------------------- building


def plan(spec: Spec) -> tuple[dict[str, Host], Bottleneck]:
    """As the netns plan, with the spec's interface names and no namespaces."""
    from orchestrator.providers import netns

    hosts, bn = netns.plan(spec)
    rename: dict[tuple[str, str], str] = {}
    for name, host in hosts.items():
        ssh = spec.host(name).ssh
        assert ssh is not None
        host.netns = ""
        new = [Interface(ssh.interfaces[i.peer], i.address, i.peer, i.peer_address, i.link)
               for i in host.interfaces]
        rename.update({(name, old.name): n.name for old, n in zip(host.interfaces, new, strict=True)})
        host.interfaces = new
    bn.egress = rename[(bn.router, bn.egress)]
    bn.ingress = [rename[(bn.router, i)] for i in bn.ingress]
    return hosts, bn


def probe(tb: SshTestbed) -> dict[str, dict[str, Any]]:
    """What each host's kernel offers: congestion controls; on a Linux router, which qdiscs."""
    from orchestrator.providers.ssh import hostvars

    def one(name: str) -> dict[str, Any]:
        ep = tb.endpoint(name)
        info: dict[str, Any] = {"release": tb.run(name, ["uname", "-r"]).stdout.strip()}
        if ep.os == "linux":
            info["ccs"] = tb.run(name, ["cat", "/proc/sys/net/ipv4/tcp_available_congestion_control"]) \
                .stdout.split()
            if name == tb.bottleneck.router:
                info["qdiscs"] = [q for q in hostvars.PROBED_QDISCS + _wanted_qdisc(tb)
                                  if _has_qdisc(tb, name, q)]
        else:
            res = tb.run(name, ["sysctl", "-n", "net.inet.tcp.cc.available"], check=False)
            info["ccs"] = [line.split()[0] for line in res.stdout.splitlines()
                           if line.strip() and not line.startswith("CCmod")]
        return info

    return dict(zip(tb.hosts, _each(one, list(tb.hosts)), strict=True))


def _each(fn: Any, items: list[str]) -> list[Any]:
    """fn over items in parallel (hosts answer independently); the first error is raised."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(items)))) as pool:
        return list(pool.map(fn, items))


def _wanted_qdisc(tb: SshTestbed) -> list[str]:
    aqm = tb.spec().host(tb.bottleneck.router).ssh.aqm  # type: ignore[union-attr]
    return [aqm] if aqm and aqm != "fifo" else []


def _has_qdisc(tb: SshTestbed, host: str, kind: str) -> bool:
    """Try the qdisc as the root of the bottleneck egress (the shaper replaces it anyway)."""
    dev = tb.bottleneck.egress
    ok = tb.run(host, ["tc", "qdisc", "replace", "dev", dev, "root", kind], check=False).returncode == 0
    tb.run(host, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
    return ok


def up(spec: Spec) -> SshTestbed:
    """Check the hosts, probe them, run the playbooks. On failure the hosts are cleaned."""
    from orchestrator.providers.ssh import ansible, hostvars

    if (state_dir_of(spec.name) / "state.json").exists():
        raise UserError(f"a testbed named {spec.name!r} is already up; run `testbed down {spec.name}` first")
    hosts, bottleneck = plan(spec)
    tb = SshTestbed(spec.name, spec.model_dump(mode="json"), hosts, bottleneck,
                    extra={"buffer_spec": spec.bottleneck.buffer, "pidfiles": {}})
    tb.status = "building"
    tb.save()  # first, so `down` can clean up after a kill -9 in the middle of `up`
    try:
        check_hosts(tb)  # fails fast, before anything changes on a host
        _each(tb.start_master, list(tb.hosts))
    except BaseException:
        tb.stop_masters()
        shutil.rmtree(tb.state_dir, ignore_errors=True)
        raise
    try:
        kernel = probe(tb)
        tb.bottleneck.delay_mode = hostvars.delay_mode(tb, kernel)
        tb.extra.update(kernel=kernel, host_vars=hostvars.host_vars(tb, kernel))
        tb.save()
        ansible.run_playbook(tb, "site.yml").raise_for_failure("testbed up")
    except BaseException:
        try:
            down(spec.name)
        except UserError:
            pass  # the first error is the one to show
        raise
    tb.status = "up"
    tb.save()
    return tb


# ---------------------------------------------------------------- tearing down


def _replay_cleanups(tb: SshTestbed, removed: list[str]) -> None:
    """Undo what a run that died left on the hosts (BPF congestion controls, tc filters, ip
    rules); records for hosts that cannot be reached are kept for the next `down`."""
    from orchestrator import workloads

    kept = []
    reachable: dict[str, bool] = {}
    for item in tb.cleanups:
        host = item.get("value", "").partition("@")[2] or item.get("value", "").partition(":")[0]
        if host in tb.hosts and host not in reachable:
            reachable[host] = tb.run(host, ["true"], check=False, timeout=15).returncode == 0
        if not reachable.get(host, True):
            kept.append(item)  # its undo would fail silently; try again at the next `down`
            continue
        try:
            done = workloads.cleanup(tb, item.get("kind", ""), item.get("value", ""))
        except UserError:
            done = False
        if done:
            removed.append(f"{item.get('kind')} {item.get('value')}")
        else:
            kept.append(item)
    tb.cleanups = kept
    tb.save()


def down(name: str) -> list[str]:
    """Run the teardown playbook on every host and forget the testbed. A host that cannot be
    reached is reported (the others are cleaned) and the state is kept for another try."""
    from orchestrator.providers.ssh import ansible
    from orchestrator.testbed.base import load

    if not (state_dir_of(name) / "state.json").exists():
        return []
    tb = load(name)
    assert isinstance(tb, SshTestbed)
    removed: list[str] = []
    for proc in tb.processes:  # local ssh clients: their remote processes stop with them
        if not is_same_process(proc):
            continue  # gone, or the pid now belongs to someone else
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            removed.append(f"process {proc.pid} ({proc.tag} on {proc.host})")
        except (ProcessLookupError, PermissionError):
            pass
    tb.processes = []
    _replay_cleanups(tb, removed)
    result = ansible.run_playbook(tb, "teardown.yml") if tb.extra.get("host_vars") else None
    tb.stop_masters()
    if result is not None and not result.ok:
        tb.status = "teardown-failed"
        tb.save()
        raise UserError(f"testbed {name!r}: {result.summary()}; the other hosts are clean. Run "
                        f"`testbed down {name}` again when they are back (state kept in {tb.state_dir})")
    removed += [f"host {h} cleaned" for h in tb.hosts] if result is not None else []
    shutil.rmtree(tb.state_dir, ignore_errors=True)
    return removed
