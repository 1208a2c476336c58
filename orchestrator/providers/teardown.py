"""Teardown in one place: what `testbed down` undoes for every provider.

A run that died (kill -9, a lost host) leaves two kinds of things behind: what a datapath set
up on the router (it finds those itself, `Datapath.clean`), and what the state file's cleanup
records name (a workload's BPF congestion control, tc filter or ip rule; a bpffs mount).
Providers call `replay` at the point of their own teardown where the records can be undone.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from orchestrator import bottleneck, workloads
from orchestrator.errors import UserError
from orchestrator.testbed.base import Testbed
from orchestrator.workloads import prague

Record = dict[str, str]


def clean_datapaths(tb: Testbed) -> list[str]:
    """Every datapath removes what it may have left; returns warnings (down goes on)."""
    warnings = []
    for cls in bottleneck.all_classes():
        try:
            cls.clean(tb)
        except Exception as e:  # noqa: BLE001 - down must go on whatever a datapath says
            warnings.append(f"warning: {cls.name} cleanup: {e}")
    return warnings


def replay(tb: Testbed | None, records: list[Record], home: Path, removed: list[str],
           local_only: bool = False) -> list[Record]:
    """Undo the cleanup records; returns the ones that could not be undone now (their host
    is unreachable), to keep for the next `down`. `local_only`: only what reaches outside
    the hosts (the netns provider: everything else goes with the namespaces). `tb` is None
    when the state file could not be read: then only this machine's records are undone."""
    kept: list[Record] = []
    reachable: dict[str, bool] = {}
    for item in records:
        kind, value = str(item.get("kind", "")), str(item.get("value", ""))
        if kind == "mount":
            _unmount(value, home, removed)
        elif kind == "struct_ops" and "@" not in value:
            _unregister_local(value, home, removed)
        elif local_only or tb is None:
            continue
        elif not _reachable(tb, _host_of(value), reachable):
            kept.append(item)  # its undo would fail silently; try again at the next `down`
        elif _undo_workload(tb, kind, value):
            removed.append(f"{kind} {value}")
        else:
            kept.append(item)
    return kept


def _host_of(value: str) -> str:
    """The host a workload record names: 'NAME@HOST', 'HOST:IFACE' or 'HOST'."""
    return value.partition("@")[2] or value.partition(":")[0]


def _reachable(tb: Testbed, host: str, seen: dict[str, bool]) -> bool:
    if host in tb.hosts and host not in seen:
        seen[host] = tb.run(host, ["true"], check=False, timeout=15).returncode == 0
    return seen.get(host, True)


def _undo_workload(tb: Testbed, kind: str, value: str) -> bool:
    try:
        return workloads.cleanup(tb, kind, value)
    except UserError:
        return False


def _unregister_local(value: str, home: Path, removed: list[str]) -> None:
    """A BPF congestion control registered on this machine: only the name workloads.l4s
    gives this testbed's, so a planted record cannot unregister anyone else's."""
    if not prague.is_testbed_cc(value, home.name):
        return
    subprocess.run(["bpftool", "struct_ops", "unregister", "name", value], capture_output=True)
    removed.append(f"struct_ops {value}")


def _unmount(value: str, home: Path, removed: list[str]) -> None:
    """Only the testbed's own mounts: a record naming any other path is ignored."""
    if Path(value).resolve().parent == home.resolve() and os.path.ismount(value):
        subprocess.run(["umount", value], capture_output=True)
        removed.append(f"mount {value}")
