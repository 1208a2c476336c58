"""Compile the workloads' BPF C sources (bpf/*.bpf.c) for this kernel, with -D parameters.

Objects are cached by (kernel, source, parameters) next to the ebpf datapath's, in the same
per-kernel directory as its vmlinux.h (generated once from /sys/kernel/btf/vmlinux, never
committed: it is this kernel's and about 3 MB).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from orchestrator.bottleneck.bpfobj import CLANG_FLAGS, VMLINUX_BTF, cache_dir, on_host
from orchestrator.errors import UserError
from orchestrator.testbed import Testbed

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
    src = BPF_DIR / source
    defines = defines or {}
    flags = [f"-D{k}={v}" for k, v in sorted(defines.items())]
    key = hashlib.sha256(src.read_bytes() + "\0".join(flags).encode()).hexdigest()[:16]
    kdir = cache_dir() / platform.release()
    out = kdir / f"{src.name.removesuffix('.bpf.c')}-{key}.o"
    if out.exists():
        return out
    why = toolchain_missing()
    if why:
        raise UserError(f"cannot build {source}: {why}")
    kdir.mkdir(parents=True, exist_ok=True)
    vmlinux = kdir / "vmlinux.h"
    if not vmlinux.exists():
        text = _tool(["bpftool", "btf", "dump", "file", str(VMLINUX_BTF), "format", "c"])
        _write_atomic(vmlinux, text.encode())
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    _tool(["clang", *CLANG_FLAGS, *flags, "-I", str(kdir), "-c", str(src), "-o", str(tmp)])
    os.replace(tmp, out)  # atomic: parallel builds of the same object are harmless
    return out


def build_on(testbed: Testbed, host: str, source: str, defines: dict[str, str | int] | None = None) -> str:
    """build(), as a path on `host`: copied there or compiled there (bpfobj.on_host)."""
    flags = [f"-D{k}={v}" for k, v in sorted((defines or {}).items())]
    return on_host(testbed, host, build(source, defines), BPF_DIR / source, [*CLANG_FLAGS, *flags])


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tool(argv: list[str]) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise UserError(f"{' '.join(argv[:3])} failed: {res.stderr.strip()[-1500:]}")
    return res.stdout
