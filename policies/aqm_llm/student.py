"""The student: a small MLP distilled from AQM-LLM (distill.py), run with numpy in microseconds.

Input: one state's normalised features (the teacher's statistics) flattened: scalars, the four
histories and their masks. Output: per class a distribution over {enqueue, drop, mark}.
On disk (a directory, like the teacher's): student.safetensors (w0, b0, w1, b1, ...),
student.json (layer sizes, provenance, metrics), stats.json. Loading never unpickles.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from safetensors.numpy import save_file

from policies.aqm_llm.anchor import Anchor
from policies.aqm_llm.checkpoint import load_safetensors, read_json, read_stats, refuse_pickles
from policies.aqm_llm.features import (
    ANCHOR_NAME,
    CLIP,
    DT_NAME,
    N_SCALARS,
    N_SERIES,
    VECTOR_LEN,
    Features,
    NormStats,
    state_vector,
)
from policies.aqm_llm.head import N_ACTIONS
from policies.aqm_llm.policy import dualpi2_queues, to_decision
from policies.base import CLASSES, HISTORY_LEN, Decision, Params, Policy, QueueConfig, QueueState
from policies.errors import PolicyError as UserError

FORMAT = "aqm-llm-student/1"
# the shipped student (models/aqm-llm-coupled/MODEL_CARD.md): what `--policy aqm-llm-student`
# runs; models/aqm-llm-student is the first model's, kept for comparison
DEFAULT_STUDENT = Path(__file__).resolve().parents[2] / "models" / "aqm-llm-coupled-student"


def student_inputs(f: Features) -> np.ndarray:
    """[N, n_in] from normalised features."""
    n = len(f.scalars)
    x = np.concatenate([f.scalars, f.series.reshape(n, -1), f.mask.reshape(n, -1)], axis=1)
    return x.astype(np.float32)


class Student:
    """MLP with ReLU hidden layers (cheap in numpy) and a softmax per class."""

    def __init__(self, weights: dict[str, np.ndarray], stats: NormStats) -> None:
        self.layers = [(weights[f"w{i}"].astype(np.float32), weights[f"b{i}"].astype(np.float32))
                       for i in range(len(weights) // 2)]
        self.stats = stats
        # student_inputs(stats.apply(f)) as one affine map over [scalars, series, mask]
        n, h = N_SERIES * HISTORY_LEN, HISTORY_LEN
        self._mean = np.concatenate([stats.scalar_mean, np.repeat(stats.series_mean, h), np.zeros(n)])
        self._std = np.concatenate([stats.scalar_std, np.repeat(stats.series_std, h), np.ones(n)])
        self._series = slice(N_SCALARS, N_SCALARS + n)

    def logits(self, x: np.ndarray) -> np.ndarray:
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return x.reshape(*x.shape[:-1], len(CLASSES), N_ACTIONS)

    def probs(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x).astype(np.float64)
        z = np.exp(z - z.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    def state_input(self, state: QueueState, anchor_log: float = 0.0) -> np.ndarray:
        """Same as student_inputs(stats.apply(from_state(state, names, anchor_log))), without
        the generic overhead."""
        raw = state_vector(state, self.stats.names, anchor_log)
        x = np.clip((raw - self._mean) / self._std, -CLIP, CLIP)
        mask = raw[self._series.stop:]
        if not mask.all():  # padded history stays exactly 0, as stats.apply leaves it
            x[self._series] *= mask
        return x.astype(np.float32)

    def save(self, out: str | Path, meta: dict) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, (w, b) in enumerate(self.layers):
            tensors[f"w{i}"], tensors[f"b{i}"] = w, b
        save_file(tensors, out / "student.safetensors")
        (out / "stats.json").write_text(self.stats.to_json())
        sizes = [w.shape[0] for w, _ in self.layers] + [self.layers[-1][0].shape[1]]
        info = {"format": FORMAT, "sizes": sizes, **meta}
        (out / "student.json").write_text(json.dumps(info, indent=1))
        return out

    @classmethod
    def load(cls, path: str | Path) -> Student:
        p = Path(path).expanduser()
        if p.is_file():
            raise UserError(f"student {p}: a file; expected a student directory (testbed distill --out)")
        if not (p / "student.safetensors").is_file():
            raise UserError(f"student {p}: no student.safetensors (made by `testbed distill`)")
        refuse_pickles(p)
        info = read_json(p / "student.json", "student")
        if info.get("format") != FORMAT:
            raise UserError(f"student {p}: student.json key 'format': {info.get('format')!r}, "
                            f"expected {FORMAT!r}")
        weights = load_safetensors(p / "student.safetensors", numpy=True)
        stats = read_stats(p, "student")
        names = [f"{k}{i}" for i in range(len(weights) // 2) for k in "wb"]
        if not weights or sorted(weights) != sorted(names):
            raise UserError(f"student {p}: student.safetensors holds {sorted(weights)[:4]}, "
                            "expected w0, b0, w1, b1, ...")
        student = cls(weights, stats)
        sizes = [w.shape for w, _ in student.layers]
        if sizes[0][0] != VECTOR_LEN or any(a[1] != b[0] for a, b in zip(sizes, sizes[1:], strict=False)) \
                or sizes[-1][1] != len(CLASSES) * N_ACTIONS:
            raise UserError(f"student {p}: layer shapes {sizes} do not fit {VECTOR_LEN} inputs and "
                            f"{len(CLASSES) * N_ACTIONS} outputs")
        return student


@dataclass
class StudentParams(Params):
    checkpoint: str = field(default="", metadata={
        "help": "student directory (testbed distill --out); "
                "empty: the shipped models/aqm-llm-coupled-student"})
    l4s_step_ms: float = field(default=1.0, metadata={"help": "L4S step-mark threshold in ms; 0 disables"})
    native: bool = field(default=True, metadata={
        "help": "decide in one C call (compiled on first use; numpy if no compiler); false: numpy"})


class StudentPolicy(Policy):
    """AQM-LLM distilled into a numpy MLP: the same decisions within tens of microseconds."""

    name: ClassVar[str] = "aqm-llm-student"
    Params: ClassVar[type[Params]] = StudentParams
    datapaths: ClassVar[tuple[str, ...]] = ("nfqueue", "ebpf")

    def __init__(self, params: Params | None = None, student: Student | None = None) -> None:
        super().__init__(params)
        if student is None:
            student = Student.load(self.params.checkpoint or DEFAULT_STUDENT)
        self.student = student
        self.native = None
        if self.params.native:
            from policies.aqm_llm.student_native import NativeStudent

            self.native = NativeStudent.build(student.layers, student._mean, student._std)
        second = student.stats.names[1]
        self.dt_feature = second == DT_NAME
        self.anchor = Anchor() if second == ANCHOR_NAME else None  # a student of an anchored teacher
        self.last_latency_s = 0.0
        self.prioritised = False

    def queue_config(self) -> QueueConfig:
        return dualpi2_queues()

    def update(self, state: QueueState) -> Decision:
        if not self.prioritised:  # once, on the control loop's own thread (worker.py says why)
            from policies.aqm_llm.worker import prioritise_control_thread

            self.prioritised = prioritise_control_thread() or True
        t0 = time.perf_counter()
        decision = to_decision(self.probabilities(state), self.params.l4s_step_ms)
        self.last_latency_s = time.perf_counter() - t0
        return decision


    def probabilities(self, state: QueueState) -> list[list[float]]:
        """Per class (enqueue, drop, mark), in C or numpy; an anchored student's anchor takes
        this state's update, so once per state."""
        anchor_log = self.anchor.update(state) if self.anchor is not None else 0.0
        if self.native is not None:
            return self.native.probs(state, state.dt * 1e3 if self.dt_feature else anchor_log)
        x = self.student.state_input(state, anchor_log)
        return [_softmax(row) for row in self.student.logits(x).tolist()]


def _softmax(row: list[float]) -> list[float]:
    """Three numbers: plain Python beats numpy's per-call overhead here."""
    top = max(row)
    e = [math.exp(v - top) for v in row]
    total = sum(e)
    return [v / total for v in e]
