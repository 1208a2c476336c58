"""Every playbook passes `ansible-playbook --syntax-check` and ansible-lint (production
profile, offline), the FreeBSD roles included; a broken playbook is caught by both."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS = ROOT / "playbooks"
BIN = Path(sys.executable).parent
ENV = {"PATH": f"{BIN}:/usr/bin:/bin:/usr/sbin:/sbin", "ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles"),
       "ANSIBLE_LIBRARY": str(PLAYBOOKS / "library"), "ANSIBLE_NOCOLOR": "1", "HOME": "/root",
       "ANSIBLE_LOCAL_TEMP": "/tmp/ansible-local", "LANG": "C.UTF-8"}
BOOKS = sorted(p.name for p in PLAYBOOKS.glob("*.yml"))


def test_the_playbooks_are_there():
    assert {"site.yml", "teardown.yml", "capture.yml"} <= set(BOOKS)
    roles = {p.name for p in (PLAYBOOKS / "roles").iterdir()}
    assert {"common", "linux_router", "freebsd_router", "senders_receivers", "capture", "teardown"} <= roles


def syntax_check(directory: Path, book: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", book],
                          cwd=directory, capture_output=True, text=True, env=ENV, timeout=120)


@pytest.mark.parametrize("book", BOOKS)
def test_syntax_check(book):
    res = syntax_check(PLAYBOOKS, book)
    assert res.returncode == 0, res.stdout + res.stderr


def lint(directory: Path) -> subprocess.CompletedProcess:
    exe = BIN / "ansible-lint"
    assert exe.exists(), "ansible-lint missing: it is in the dev extras (scripts/setup.sh)"
    return subprocess.run([str(exe), "--offline", "--profile", "production", "--nocolor", *BOOKS],
                          cwd=directory, capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.slow
def test_ansible_lint_production_profile():
    res = lint(PLAYBOOKS)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.slow
def test_checks_catch_a_broken_role(tmp_path):
    """The checks can fail: a role with a bare `command` and a bad YAML key is caught."""
    copy = tmp_path / "playbooks"
    shutil.copytree(PLAYBOOKS, copy)
    tasks = copy / "roles" / "freebsd_router" / "tasks" / "main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: run ipfw the lazy way\n  shell: ipfw show | head\n")
    res = lint(copy)
    assert res.returncode != 0 and "freebsd_router" in res.stdout + res.stderr
    tasks.write_text(tasks.read_text() + "\n- name: Broken\n  ansible.builtin.command:\n    argv: [a]\n"
                     "  not_a_task_keyword: 1\n")
    assert syntax_check(copy, "site.yml").returncode != 0
