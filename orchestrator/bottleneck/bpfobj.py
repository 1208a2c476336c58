"""BPF objects from Python: compile with clang, load and pin through libbpf.so.1 (ctypes).

Only opaque libbpf pointers cross into Python, so no C struct layout is mirrored here. Pins
live on the testbed's own bpffs mount: `ip netns exec` remounts /sys, so /sys/fs/bpf pins are
invisible inside a host's namespace (FACTS).
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.testbed.base import Testbed

BPF_DIR = Path(__file__).parent / "bpf"
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
CLANG_FLAGS = ["-O2", "-g", "-target", "bpf"]
# A fixed script with paths as arguments: vmlinux.h of the host's own kernel, made once.
VMLINUX_H = 'test -s "$1" || bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$1"'


def cache_dir() -> Path:
    base = os.environ.get("TESTBED_CACHE") or os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "testbed" / "bpf"


def build(source: str) -> Path:
    """Compile bpf/<source> for this kernel once; return the object's path (cached by hash)."""
    return compile_cached(BPF_DIR / source, ["-D__TARGET_ARCH_x86"], Path(source).stem)


def compile_cached(src: Path, flags: list[str], stem: str) -> Path:
    """clang src with flags against this kernel's vmlinux.h, once per (kernel, source, flags)."""
    key = hashlib.sha256(src.read_bytes() + "\0".join(flags).encode()).hexdigest()[:16]
    kdir = cache_dir() / platform.release()  # vmlinux.h is this kernel's, so is the object
    out = kdir / f"{stem}-{key}.o"
    if out.exists():
        return out
    kdir.mkdir(parents=True, exist_ok=True)
    vmlinux = kdir / "vmlinux.h"
    if not vmlinux.exists():
        if not VMLINUX_BTF.exists():
            raise UserError(f"this kernel has no BTF ({VMLINUX_BTF}); BPF programs need it")
        text = _tool(["bpftool", "btf", "dump", "file", str(VMLINUX_BTF), "format", "c"])
        _write_atomic(vmlinux, text.encode())
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    _tool(["clang", *CLANG_FLAGS, *flags, "-I", str(kdir), "-c", str(src), "-o", str(tmp)])
    os.replace(tmp, out)  # atomic: parallel builds of the same object are harmless
    return out


def build_on(tb: Testbed, host: str) -> str:
    """build('dualq.c'), as a path on `host` (see on_host)."""
    return on_host(tb, host, build("dualq.c"), BPF_DIR / "dualq.c", [*CLANG_FLAGS, "-D__TARGET_ARCH_x86"])


def on_host(tb: Testbed, host: str, obj: Path, src: Path, flags: list[str]) -> str:
    """Where `host` finds `obj` (built here from src with clang flags).

    A host that sees this filesystem (namespaces) uses the local object. A remote host whose
    kernel release is this machine's gets a copy: the object was built against this kernel's
    BTF. Any other host compiles src itself, against its own kernel's BTF (it needs clang and
    bpftool). Either way the object is kept in the host's workdir for the next run."""
    if tb.shares_files(host):
        return str(obj)
    release = tb.run(host, ["uname", "-r"]).stdout.strip()
    where = tb.workdir(host, cache_dir() / release)
    target = f"{where}/{obj.name}"
    if tb.run(host, ["test", "-s", target], check=False).returncode == 0:
        return target
    if release == platform.release():
        tb.put(host, target, obj.read_bytes(), mode=0o644)
        return target
    tb.put(host, f"{where}/{src.name}", src.read_bytes(), mode=0o644)
    tb.run(host, ["sh", "-c", VMLINUX_H, "sh", f"{where}/vmlinux.h"], timeout=120)
    tb.run(host, ["clang", *flags, "-I", where, "-c", f"{where}/{src.name}", "-o", target], timeout=300)
    return target


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tool(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UserError(f"{argv[0]} is not installed (apt-get install clang llvm bpftool)") from None
    if res.returncode != 0:
        raise UserError(f"{' '.join(argv[:3])} failed: {res.stderr.strip()[-1500:]}")
    return res.stdout


def _libbpf() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        raise UserError("libbpf.so.1 not found (apt-get install libbpf1)") from None
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for name, res, args in [
        ("bpf_object__open_file", vp, [cp, vp]), ("bpf_object__load", ci, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_program_by_name", vp, [vp, cp]),
        ("bpf_object__find_map_by_name", vp, [vp, cp]),
        ("bpf_program__pin", ci, [vp, cp]), ("bpf_program__attach", vp, [vp]),
        ("bpf_link__pin", ci, [vp, cp]), ("bpf_link__destroy", ci, [vp]),
        ("bpf_map__pin", ci, [vp, cp]), ("bpf_obj_get", ci, [cp]),
        ("bpf_map_lookup_elem", ci, [ci, vp, vp]), ("libbpf_num_possible_cpus", ci, []),
    ]:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def _check(ok: bool, what: str) -> None:
    if not ok:
        err = ctypes.get_errno()
        raise UserError(f"{what}: {os.strerror(err)} (errno {err})")


class LoadedObject:
    """A BPF object loaded into the kernel. Pin what must outlive this process, then close."""

    def __init__(self, path: Path) -> None:
        self.lib = _libbpf()
        self.obj = self.lib.bpf_object__open_file(str(path).encode(), None)
        _check(bool(self.obj), f"open {path}")
        _check(self.lib.bpf_object__load(self.obj) == 0, f"load {path.name} into the kernel")

    def pin_map(self, name: str, path: Path) -> None:
        m = self.lib.bpf_object__find_map_by_name(self.obj, name.encode())
        _check(bool(m), f"map {name}")
        _check(self.lib.bpf_map__pin(m, str(path).encode()) == 0, f"pin map {name} at {path}")

    def pin_program(self, name: str, path: Path) -> None:
        prog = self._program(name)
        _check(self.lib.bpf_program__pin(prog, str(path).encode()) == 0, f"pin {name} at {path}")

    def attach_and_pin(self, name: str, path: Path) -> None:
        """Attach a tracing program; the pinned link keeps it attached after we exit."""
        link = self.lib.bpf_program__attach(self._program(name))
        _check(bool(link), f"attach {name}")
        ok = self.lib.bpf_link__pin(link, str(path).encode()) == 0
        self.lib.bpf_link__destroy(link)  # frees our handle; the pin holds the link
        _check(ok, f"pin link {name} at {path}")

    def _program(self, name: str) -> int:
        prog = self.lib.bpf_object__find_program_by_name(self.obj, name.encode())
        _check(bool(prog), f"program {name}")
        return prog

    def close(self) -> None:
        self.lib.bpf_object__close(self.obj)


def open_pinned(path: Path) -> int:
    """An fd for a pinned map or program (the caller closes it)."""
    fd = _libbpf().bpf_obj_get(str(path).encode())
    _check(fd >= 0, f"open pinned {path}")
    return fd


class PercpuArray:
    """A pinned per-CPU array: one lookup returns the value of every CPU."""

    def __init__(self, path: Path, value_size: int) -> None:
        self.lib = _libbpf()
        self.fd = open_pinned(path)
        self.ncpus = self.lib.libbpf_num_possible_cpus()
        self.stride = (value_size + 7) // 8 * 8
        self.buf = ctypes.create_string_buffer(self.stride * self.ncpus)

    def lookup(self, key: int) -> bytes:
        """The values of all CPUs, back to back (`stride` bytes each)."""
        k = ctypes.c_uint32(key)
        _check(self.lib.bpf_map_lookup_elem(self.fd, ctypes.byref(k), self.buf) == 0,
               f"lookup key {key}")
        return self.buf.raw

    def close(self) -> None:
        os.close(self.fd)


def mmap_array(path: Path, value_size: int, entries: int) -> mmap.mmap:
    """Map a BPF_F_MMAPABLE array into memory: reads and writes without a syscall."""
    fd = open_pinned(path)
    try:
        size = _round_pages(value_size * entries)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _round_pages(n: int) -> int:
    return (n + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
