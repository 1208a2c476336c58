"""Shared fixtures: a CLI runner and real testbeds that are always torn down."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTBED = [sys.executable, "-m", "orchestrator.cli"]


def run_cli(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run([*TESTBED, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and res.returncode != 0:
        raise AssertionError(f"testbed {' '.join(args)} failed: {res.stdout}\n{res.stderr}")
    return res


def one_clear_line(res: subprocess.CompletedProcess, *words: str) -> str:
    """The error line; asserts non-zero exit, no traceback, one line, and the words in it."""
    assert res.returncode != 0, res.stdout
    err = res.stderr.strip()
    assert "Traceback" not in err and "Traceback" not in res.stdout, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:4]}"


def dumbbell_yaml(name: str, rate: str = "50mbit", rtt: str = "20ms", buffer: str = "1.5bdp",
                  senders: int = 2, scenario: str = "") -> str:
    hosts = "".join(f"  - {{name: s{i}, role: sender}}\n" for i in range(1, senders + 1))
    links = "".join(f"  - {{a: s{i}, b: r1}}\n" for i in range(1, senders + 1))
    return (f"name: {name}\nhosts:\n{hosts}  - {{name: r1, role: router}}\n"
            f"  - {{name: rx, role: receiver}}\nlinks:\n{links}"
            f"  - {{a: r1, b: rx, bottleneck: {{rate: {rate}, rtt: {rtt}, buffer: {buffer}}}}}\n"
            f"{scenario}")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")


@pytest.fixture
def netns_testbed(tmp_path):
    """Factory: build a testbed from YAML text; every one built is torn down afterwards."""
    from orchestrator.providers import netns
    from orchestrator.spec import schema as specmod

    built: list[str] = []

    def make(yaml_text: str):
        path = tmp_path / "testbed.yaml"
        path.write_text(yaml_text)
        spec = specmod.load(path)
        built.append(spec.name)
        return netns.up(spec)

    yield make
    for name in built:
        run_cli("down", name)
