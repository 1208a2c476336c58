"""Datapaths: where a policy's decisions meet packets on the bottleneck router.

The one registry of datapaths: `testbed run --datapath` choices, `Run` and `testbed down`'s
cleanup all read it. Modules are imported on use (ebpf needs libbpf tooling, nfqueue the
netfilterqueue binding), so listing them costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.bottleneck.base import Datapath

DATAPATHS = {"nfqueue": "orchestrator.bottleneck.nfqueue:NfqueueDatapath",
             "ebpf": "orchestrator.bottleneck.ebpf:EbpfDatapath",
             "kernel": "orchestrator.bottleneck.kernel:KernelDatapath",
             "dummynet": "orchestrator.bottleneck.dummynet:DummynetDatapath"}
DEFAULT_DATAPATH = "nfqueue"


def names() -> list[str]:
    return list(DATAPATHS)


def datapath_class(name: str) -> type[Datapath]:
    if name not in DATAPATHS:
        raise UserError(f"unknown datapath {name!r} (expected one of: {', '.join(DATAPATHS)})")
    module, cls = DATAPATHS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def all_classes() -> list[type[Datapath]]:
    """Every datapath class (for cleanup, which must try them all)."""
    return [datapath_class(name) for name in DATAPATHS]
