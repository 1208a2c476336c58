"""Run directories under results/: naming, the manifest, and atomic writes.

A manifest says `running` while a run is in progress; `complete` or `aborted` when it ends.
A run whose process died without saying (kill -9) is found by its dead pid and marked
aborted by whoever looks next (`mark_orphans`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from orchestrator import strictjson

RESULTS_ROOT = Path(os.environ.get("TESTBED_RESULTS", "results"))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(strictjson.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def writable_root(root: Path) -> Path:
    """`root` created if needed and writable, else a UserError: found at the start of a run,
    not as a traceback once traffic has flowed."""
    from orchestrator.errors import UserError

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--results: cannot create {root}: {e.strerror}") from None
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        raise UserError(f"--results: {root} is not a folder this user can write to")
    return root


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def new_run_dir(policy: str, datapath: str, root: Path | None = None) -> Path:
    root = root or RESULTS_ROOT
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        suffix = f"-{n}" if n else ""
        path = root / f"{stamp}-{policy}-{datapath}{suffix}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError("cannot create a run directory")


def versions() -> dict[str, str]:
    """Versions of everything that shapes a result, for the manifest."""
    out = {"kernel": platform.release(), "python": platform.python_version()}
    for tool, argv in (("iperf3", ["iperf3", "--version"]), ("tcpdump", ["tcpdump", "--version"]),
                       ("iproute2", ["ip", "-V"]), ("clang", ["clang", "--version"])):
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            out[tool] = (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            out[tool] = "absent"
    out["git"] = git_revision()
    try:
        from importlib.metadata import version

        out["l4s-testbed"] = version("l4s-testbed")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        out["l4s-testbed"] = "unknown"
    return out


def git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (rev + ("+dirty" if dirty else "")) if rev else "unknown"


def mark_orphans(root: Path | None = None) -> list[Path]:
    """Mark runs whose process died while `running` as aborted; return them."""
    return [m.parent for m in sorted((root or RESULTS_ROOT).glob("*/manifest.json"))
            if mark_if_orphan(m)]


def mark_if_orphan(manifest: Path) -> bool:
    """Mark the run of `manifest` aborted if it says `running` but its process is gone (a
    kill -9); True if it was marked."""
    try:
        data = read_json(manifest)
    except (OSError, ValueError):
        return False
    if data.get("status") == "running" and not _alive(int(data.get("pid", 0) or 0)):
        data.update(status="aborted", ended=data.get("ended") or time.time(),
                    abort_reason="the run's process died")
        write_json(manifest, data)
        return True
    return False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
