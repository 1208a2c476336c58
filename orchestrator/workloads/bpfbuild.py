"""Compile the workloads' BPF C sources (bpf/*.bpf.c) for this kernel, with -D parameters.

Objects are cached by (kernel, source, parameters) next to the ebpf datapath's, in the same
per-kernel directory as its vmlinux.h (generated once from /sys/kernel/btf/vmlinux, never
committed: it is this kernel's and about 3 MB).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from orchestrator.bottleneck.bpfobj import CLANG_FLAGS, VMLINUX_BTF, compile_cached, on_host
from orchestrator.errors import UserError
from orchestrator.testbed.base import Testbed

BPF_DIR = Path(__file__).parent / "bpf"


def toolchain_missing() -> str | None:
    """Why BPF objects cannot be built and loaded here, or None if they can."""
    if not VMLINUX_BTF.exists():
        return f"this kernel has no BTF ({VMLINUX_BTF})"
    for tool in ("clang", "bpftool", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install clang llvm bpftool iproute2)"
    return None


def build(source: str, defines: dict[str, str | int] | None = None) -> Path:
    """Compile bpf/<source> with -DKEY=VALUE for each define; return the cached object."""
    flags = [f"-D{k}={v}" for k, v in sorted((defines or {}).items())]
    why = toolchain_missing()
    if why:
        raise UserError(f"cannot build {source}: {why}")
    return compile_cached(BPF_DIR / source, flags, source.removesuffix(".bpf.c"))


def build_on(testbed: Testbed, host: str, source: str, defines: dict[str, str | int] | None = None) -> str:
    """build(), as a path on `host`: copied there or compiled there (bpfobj.on_host)."""
    flags = [f"-D{k}={v}" for k, v in sorted((defines or {}).items())]
    return on_host(testbed, host, build(source, defines), BPF_DIR / source, [*CLANG_FLAGS, *flags])
