"""How the controller reaches each host of an ssh testbed: endpoints, ssh options, and where
things live on the hosts (their working folder, the project, its interpreter)."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from orchestrator.spec.schema import Spec
from orchestrator.spec.ssh import SshSettings
from orchestrator.testbed.state import state_dir_of

REPO = Path(__file__).resolve().parents[3]
SERVER_ALIVE = ("-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3")  # lost host: ~6 s


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


def control_dir(testbed: str) -> Path:
    """Unix socket paths are limited to about 100 bytes: use the state dir if short enough."""
    path = state_dir_of(testbed) / "cm"
    if len(str(path)) > 60:
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        path = Path(f"/tmp/tbcm-{os.getuid()}-{digest}")
    return path
