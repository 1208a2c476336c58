"""Running the playbooks of an ssh testbed through ansible-runner.

The private data dir lives under the testbed's state dir (STATE_ROOT/<name>/ansible): the
generated inventory, ansible-runner's artifacts (full output, for when something fails) and
Ansible's local temp files. The inventory holds addresses, users and paths to keys, never key
material; nothing is handed to ansible-runner's `ssh_key` (which would copy a key into the
private data dir).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import UserError
from orchestrator.providers.ssh.settings import control_dir, settings_of, ssh_options

PLAYBOOKS = Path(__file__).resolve().parents[3] / "playbooks"
TIMEOUT_S = 1800


@dataclass
class PlaybookResult:
    playbook: str
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    failed: dict[str, str] = field(default_factory=dict)  # host -> what failed
    unreachable: dict[str, str] = field(default_factory=dict)
    artifacts: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "successful" and not self.failed and not self.unreachable

    def summary(self) -> str:
        parts = [f"{h} unreachable: {m}" for h, m in self.unreachable.items()]
        parts += [f"{h}: {m}" for h, m in self.failed.items()]
        if not parts:
            parts = [f"ansible-playbook {self.status} (rc {self.rc})"]
        return "; ".join(parts)

    def raise_for_failure(self, what: str) -> None:
        if not self.ok:
            raise UserError(f"{what}: {self.playbook}: {self.summary()} (full output: {self.artifacts})")


def inventory(tb: Any) -> dict[str, Any]:
    """One host per testbed host, its `tb` variables, and groups by role and OS."""

    spec = tb.spec()
    s = settings_of(spec)
    hosts: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for name in tb.hosts:
        ep = tb.endpoint(name)
        hv: dict[str, Any] = {"ansible_host": ep.address, "ansible_port": ep.port, "ansible_user": ep.user,
                              "ansible_ssh_common_args": shlex.join(_common_args(ssh_options(s, ep))),
                              "tb": tb.extra["host_vars"][name]}
        if ep.key_file:
            hv["ansible_ssh_private_key_file"] = ep.key_file
        python = spec.host(name).ssh.python
        if python:
            hv["ansible_python_interpreter"] = python
        hosts[name] = hv
        role = tb.hosts[name].role
        group = f"routers_{ep.os}" if role == "router" else f"{role}s"
        groups.setdefault(group, {"hosts": {}})["hosts"][name] = {}
        groups.setdefault(ep.os, {"hosts": {}})["hosts"][name] = {}
    return {"all": {"hosts": hosts, "children": groups}}


def _common_args(opts: list[str]) -> list[str]:
    """Our ssh options without -i (Ansible passes the key itself)."""
    out, skip = [], False
    for opt in opts:
        if skip:
            skip = False
            continue
        if opt == "-i":
            skip = True
            continue
        out.append(opt)
    return out


def private_dir(tb: Any) -> Path:
    path = tb.state_dir / "ansible"
    (path / "inventory").mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def envvars(tb: Any, pdd: Path) -> dict[str, str]:

    s = settings_of(tb.spec())
    bindir = str(Path(sys.executable).parent)
    cp = control_dir(tb.name).parent / f"{control_dir(tb.name).name}-ansible"
    cp.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {
        "PATH": bindir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles"),
        "ANSIBLE_LIBRARY": str(PLAYBOOKS / "library"),
        "ANSIBLE_HOST_KEY_CHECKING": str(not s.insecure_ignore_host_keys),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=15s",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp),
        "ANSIBLE_TIMEOUT": str(max(1, round(s.connect_timeout_s))),
        "ANSIBLE_SSH_RETRIES": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(pdd / "tmp"),
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_FORKS": "20",
    }


def run_playbook(tb: Any, playbook: str, extravars: dict[str, Any] | None = None,
                 limit: str | None = None, tags: str | None = None) -> PlaybookResult:
    """Run playbooks/<playbook> on the testbed's hosts; never raises for a failed host."""
    import ansible_runner

    pdd = private_dir(tb)
    inv = pdd / "inventory" / "hosts.yml"
    inv.write_text(yaml.safe_dump(inventory(tb), sort_keys=False))
    os.chmod(inv, 0o600)
    _venv_on_path()
    runner = ansible_runner.run(
        private_data_dir=str(pdd), playbook=str(PLAYBOOKS / playbook), inventory=str(inv),
        project_dir=str(PLAYBOOKS), extravars=extravars or {}, envvars=envvars(tb, pdd),
        limit=limit, tags=tags, quiet=True, rotate_artifacts=4, timeout=TIMEOUT_S)
    result = PlaybookResult(playbook, runner.status, runner.rc,
                            artifacts=str(Path(runner.config.artifact_dir) / "stdout"))
    for event in runner.events:
        _note(event, result)
    return result


def _venv_on_path() -> None:
    """ansible-runner finds ansible-playbook on PATH: make it this interpreter's."""
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + path


def _note(event: dict[str, Any], result: PlaybookResult) -> None:
    data = event.get("event_data", {})
    host = data.get("host")
    if not host:
        return
    res = data.get("res") or {}
    if event.get("event") == "runner_on_unreachable":
        result.unreachable.setdefault(host, str(res.get("msg", "unreachable")).strip()[-300:])
    elif event.get("event") == "runner_on_failed" and not data.get("ignore_errors"):
        items = [r for r in res.get("results") or [] if isinstance(r, dict) and r.get("failed")]
        first = items[0] if items else res  # a loop: say what its first failed item said
        msg = str(first.get("msg") or res.get("msg") or "").strip()
        detail = str(first.get("stderr") or first.get("module_stderr") or "").strip()[-300:]
        text = f"task '{data.get('task', '?')}' failed: {msg}" + (f": {detail}" if detail else "")
        result.failed.setdefault(host, text)
