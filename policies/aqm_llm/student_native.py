"""The student's decision as one call into C (native/student.c says why: live, every numpy
call starts cold, and the decision took ~300 us instead of ~30).

The C file is compiled with the system's C compiler on first use into
~/.cache/testbed/native/ (named by the source's hash, so an edit rebuilds it). Without a
compiler, `NativeStudent.build` returns None and the student stays in numpy.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from policies.aqm_llm.features import CLASS_KEYS
from policies.base import CLASSES, HISTORY_LEN, QueueState

SOURCE = Path(__file__).resolve().parent / "native" / "student.c"
MAX_LAYERS = 8
N_IN = 2 + len(CLASSES) * len(CLASS_KEYS)  # link rate, dt, the classes' values


class _Model(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_int), ("sizes", ctypes.c_int * (MAX_LAYERS + 1)),
                ("w", ctypes.c_void_p * MAX_LAYERS), ("b", ctypes.c_void_p * MAX_LAYERS),
                ("mean", ctypes.c_void_p), ("std", ctypes.c_void_p)]


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "testbed" / "native"


def library() -> ctypes.CDLL | None:
    """The compiled student.c (built once per source version), or None without a compiler."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    lib = _cache_dir() / f"student-{digest}.so"
    if not lib.exists():
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            return None
        lib.parent.mkdir(parents=True, exist_ok=True)
        # built beside its final name and renamed: two processes may build it at once
        with tempfile.NamedTemporaryFile(dir=lib.parent, suffix=".so", delete=False) as tmp:
            pass
        res = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp.name, str(SOURCE), "-lm"],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            os.unlink(tmp.name)
            return None
        os.replace(tmp.name, lib)
    dll = ctypes.CDLL(str(lib))
    dll.student_forward.restype = ctypes.c_int
    dll.student_forward.argtypes = [ctypes.POINTER(_Model), ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p]
    return dll


class NativeStudent:
    """Student.probs(Student.state_input(state)) for one live state, in one C call."""

    def __init__(self, dll: ctypes.CDLL, layers: list[tuple[np.ndarray, np.ndarray]],
                 mean: np.ndarray, std: np.ndarray) -> None:
        self.dll = dll
        # the arrays the struct points into live as long as this object
        self._keep: list[Any] = [np.ascontiguousarray(a, np.float32) for w, b in layers for a in (w, b)]
        self._mean, self._std = (np.ascontiguousarray(a, np.float64) for a in (mean, std))
        m = _Model()
        m.n_layers = len(layers)
        sizes = [layers[0][0].shape[0]] + [w.shape[1] for w, _ in layers]
        for i, size in enumerate(sizes):
            m.sizes[i] = size
        for i in range(len(layers)):
            m.w[i], m.b[i] = self._keep[2 * i].ctypes.data, self._keep[2 * i + 1].ctypes.data
        m.mean, m.std = self._mean.ctypes.data, self._std.ctypes.data
        self.model = m
        self.inputs = (ctypes.c_double * (N_IN + 4 * HISTORY_LEN))()
        self.lens = (ctypes.c_int * 4)()
        self.out = (ctypes.c_double * 6)()
        self._keys = [(c, CLASS_KEYS) for c in CLASSES]

    @classmethod
    def build(cls, layers: list[tuple[np.ndarray, np.ndarray]], mean: np.ndarray,
              std: np.ndarray) -> NativeStudent | None:
        if len(layers) > MAX_LAYERS or max(w.shape[1] for w, _ in layers) > 1024:
            return None
        dll = library()
        return cls(dll, layers, mean, std) if dll is not None else None

    def probs(self, state: QueueState, second: float = 0.0) -> list[list[float]]:
        """[[enqueue, drop, mark] for l4s, the same for classic]; `second`: the feature set's
        second scalar, which the C code takes as given (features.scalar_values: dt in ms for
        the legacy set, the anchor's log10 p' for the anchored one, else 0)."""
        buf = self.inputs
        buf[0], buf[1] = state.link_rate_bps, second
        j = 2
        for cls, keys in self._keys:
            per = vars(state.of(cls))
            for key in keys:
                buf[j] = per[key]
                j += 1
        hists = (state.sojourn_history, state.sojourn_history, state.rate_history, state.rate_history)
        for i, (hist, cls) in enumerate(zip(hists, CLASSES * 2, strict=True)):
            values = hist.get(cls, ())[-HISTORY_LEN:]
            n = len(values)
            if n:
                end = N_IN + (i + 1) * HISTORY_LEN
                buf[end - n:end] = values
            self.lens[i] = n
        if self.dll.student_forward(ctypes.byref(self.model), buf, self.lens, self.out) != 0:
            raise RuntimeError("student_forward: the model does not fit the C kernel")
        out = self.out
        return [[out[0], out[1], out[2]], [out[3], out[4], out[5]]]
