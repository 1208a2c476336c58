"""Workloads: the flows of a scenario, driven through a testbed.

Light on purpose: the tools in this package (tcp_sender, udp_cbr, scapy_sender) run inside
host namespaces as `python -m orchestrator.workloads.<tool>` and import only the stdlib.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from orchestrator.spec.scenario import FlowSpec, Scenario
    from orchestrator.testbed.base import Testbed


def run_flows(testbed: Testbed, scenario_or_flows: Scenario | list[FlowSpec], out_dir: str | Path,
              duration: float | None = None,
              on_progress: Callable[[float, float], None] | None = None,
              on_t0: Callable[[float], None] | None = None, t0_lead_s: float = 0.0) -> list[dict[str, Any]]:
    """Run the flows on schedule; reports land in out_dir/flows/<flow>.json. See scheduler."""
    from orchestrator.workloads.scheduler import run_flows as run

    return run(testbed, scenario_or_flows, out_dir, duration, on_progress, on_t0, t0_lead_s)


def validate(testbed: Testbed, flows: list[FlowSpec], duration: float | None = None) -> None:
    """Raise UserError for the first flow that cannot run on this testbed. See plan."""
    from orchestrator.workloads.plan import validate as check

    check(testbed, flows, duration)


def cleanup(testbed: Testbed, kind: str, value: str) -> bool:
    """Undo one cleanup record a workload left ('struct_ops', 'tc-filter', 'ip-rule');
    False if the kind is not a workload's. Idempotent."""
    from orchestrator.workloads import ccroute, ect1, l4s

    if kind == "struct_ops":
        l4s.undo(testbed, value)
    elif kind == ect1.CLEANUP_KIND:
        ect1.undo(testbed, value)
    elif kind == ccroute.CLEANUP_KIND:
        ccroute.undo(testbed, value)
    else:
        return False
    return True
