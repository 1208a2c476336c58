"""The `ssh:` parts of a testbed file (provider: ssh): the shared settings and each host's.

Every value here may reach an ssh or ansible command line, so each is checked against a
narrow alphabet before it is used.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.spec import units

# Values that reach an ssh or ansible command line: no leading '-' (option injection), no
# whitespace, quotes or '%' (ssh expands %-tokens and splits some option values on spaces).
SSH_ADDRESS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,252}$")
SSH_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
IFACE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,14}$")
SAFE_PATH = re.compile(r"^[^\s'\"%\\]+$")



def _check_user(v: str | None) -> str | None:
    if v is not None and not SSH_USER.fullmatch(v):
        raise ValueError(f"expected a user name like 'root', got {v!r}")
    return v


def _check_port(v: int | None) -> int | None:
    if v is not None and not 1 <= v <= 65535:
        raise ValueError(f"expected a port between 1 and 65535, got {v}")
    return v

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _safe_path(v: str | None) -> str | None:
    if v is not None and (not SAFE_PATH.fullmatch(v) or v.startswith("-")):
        raise ValueError(f"expected a path without spaces, quotes or '%', got {v!r}")
    return v


class SshHost(Strict):
    """An existing machine (provider: ssh): how to reach it and which interfaces to use."""

    address: str = Field(description="IP address or DNS name the controller reaches it at")
    user: str | None = None  # default: ssh.user
    port: int | None = None  # default: ssh.port
    key_file: str | None = None  # a path; default: ssh.key_file, else ssh-agent
    os: Literal["linux", "freebsd"] = "linux"
    # peer host name -> the interface on this host that links to it
    interfaces: dict[str, str] = {}
    python: str | None = None  # the interpreter Ansible uses there (default: discovered)
    # routers only: the bottleneck's queue discipline set up at `up` (see playbooks/README.md)
    aqm: str | None = None
    aqm_args: dict[str, str | int | float | bool] = {}

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not SSH_ADDRESS.fullmatch(v):
            raise ValueError(f"expected an IP address or host name, got {v!r}")
        return v

    _user = field_validator("user")(_check_user)
    _port = field_validator("port")(_check_port)

    @field_validator("key_file", "python")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return _safe_path(v)

    @field_validator("interfaces")
    @classmethod
    def _interfaces(cls, v: dict[str, str]) -> dict[str, str]:
        for peer, name in v.items():
            if not IFACE_NAME.fullmatch(name):
                raise ValueError(f"expected an interface name like 'eth1' for {peer!r}, got {name!r}")
        return v

    @field_validator("aqm")
    @classmethod
    def _aqm(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z][a-z0-9_]{0,15}", v):
            raise ValueError(f"expected a queue discipline name like 'fq_codel', got {v!r}")
        return v


class SshSettings(Strict):
    """Settings shared by every host of an ssh testbed (top-level `ssh:`)."""

    user: str = "root"
    port: int = 22
    key_file: str | None = None  # a path to a private key; never the key itself
    known_hosts: str = "~/.ssh/known_hosts"
    # Host keys are verified against known_hosts. Only for throwaway labs: accept any key.
    insecure_ignore_host_keys: bool = False
    connect_timeout: str = "5s"
    remote_dir: str = "/var/tmp/l4s-testbed"  # where hosts keep state, pids and outputs
    # The project on the hosts (routers run its delay line and datapaths). Default: the same
    # path and interpreter as on the controller.
    project_dir: str | None = None
    project_python: str | None = None
    install_project: bool = False  # copy this checkout to project_dir and make a venv there
    install_packages: bool = False  # install missing iperf3/tcpdump/ethtool with the OS's tool

    _user = field_validator("user")(_check_user)
    _port = field_validator("port")(_check_port)

    @field_validator("key_file", "known_hosts", "remote_dir", "project_dir", "project_python")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return _safe_path(v)

    @field_validator("connect_timeout")
    @classmethod
    def _timeout(cls, v: str) -> str:
        if units.seconds(v) <= 0:
            raise ValueError(f"expected a positive time like '5s', got {v!r}")
        return v

    @property
    def connect_timeout_s(self) -> float:
        return units.seconds(self.connect_timeout)
