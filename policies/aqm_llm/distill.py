"""Distillation: a small MLP student learns AQM-LLM's decisions over the pool's states.

Teacher labels come from running the deployed policy (AqmLlmPolicy, with its KV-cached
context and its own previous actions) over each episode's states in order, exactly as it
would act in the control loop; the student sees one state (with its histories) and learns the
teacher's per-class distributions with a soft cross-entropy. Held-out episodes measure how
closely it follows (loss, mean absolute error of p_drop / p_mark, and, since a difference
hides errors at small probabilities, the median |log10 p_student - log10 p_teacher| per class
on states where the teacher signals: issue 14, item 7).

`log_weight` adds that blind spot to the loss: a Huber term on log10 of each class's signal
probability (drop + mark), floored at 1e-8, beside the cross-entropy. The student is still a
softmax per class, so the shipped C and numpy code runs it unchanged; only what it is taught
to get right changes (a factor of 10 at p = 1e-4 costs the cross-entropy about 1e-3 nats,
and the log term 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as nnf
from torch import nn

from policies.aqm_llm import dataset as D
from policies.aqm_llm import features as F
from policies.aqm_llm.coupled import LOG10_MIN, log_errors, median
from policies.aqm_llm.features import from_rows
from policies.aqm_llm.model import soft_cross_entropy
from policies.aqm_llm.policy import AqmLlmParams, AqmLlmPolicy
from policies.aqm_llm.student import Student, student_inputs


def teacher_labels(teacher: AqmLlmPolicy, frame: pd.DataFrame,
                   progress: bool = False) -> dict[str, np.ndarray]:
    """Student inputs [N, n_in], teacher probabilities [N, 2, 3] and episode index [N]."""
    from tqdm.auto import tqdm

    xs, ps, eps = [], [], []
    bar = tqdm(total=len(frame), disable=not progress, desc="teacher")
    for i, (_, rows) in enumerate(D.episodes(frame)):
        teacher.reset()
        xs.append(student_inputs(teacher.stats.apply(from_rows(rows, teacher.stats.names))))
        ps.append(np.stack([teacher.probabilities(s).numpy() for s in D.states(rows)]))
        eps.append(np.full(len(rows), i))
        bar.update(len(rows))
    bar.close()
    return {"x": np.concatenate(xs), "p": np.concatenate(ps).astype(np.float32),
            "episode": np.concatenate(eps)}


def fit_student(labels: dict[str, np.ndarray], hidden: Sequence[int] = (64, 64), steps: int = 2000,
                batch: int = 256, lr: float = 2e-3, seed: int = 0, val_frac: float = 0.2,
                log_weight: float = 0.0) -> tuple[list, dict[str, float]]:
    """Train the MLP (torch) on the labels; (numpy weights, metrics on held-out episodes)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    is_val = _held_out(labels["episode"], val_frac, rng)
    x, p = torch.from_numpy(labels["x"]), torch.from_numpy(labels["p"])
    sizes = [x.shape[1], *hidden, p.shape[1] * p.shape[2]]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
    mlp = nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    train_idx = np.flatnonzero(~is_val)
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(train_idx, size=min(batch, len(train_idx))))
        loss = _loss(mlp, x[idx], p[idx], log_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = [(m.weight.detach().T.numpy().copy(), m.bias.detach().numpy().copy())
               for m in mlp if isinstance(m, nn.Linear)]
    return weights, _metrics(mlp, x, p, is_val)


def _held_out(episode: np.ndarray, val_frac: float, rng: np.random.Generator) -> np.ndarray:
    """Whole episodes held out; with one episode, its last val_frac."""
    n_ep = int(episode.max()) + 1
    if n_ep == 1:
        return np.arange(len(episode)) >= (1 - val_frac) * len(episode)
    return np.isin(episode, rng.permutation(n_ep)[:max(1, round(val_frac * n_ep))])


def _loss(mlp: nn.Module, x: torch.Tensor, p: torch.Tensor, log_weight: float = 0.0) -> torch.Tensor:
    logits = mlp(x).unflatten(-1, p.shape[1:])
    loss = soft_cross_entropy(logits, p, torch.ones(len(x)))
    if log_weight > 0:
        loss = loss + log_weight * signal_log_loss(logits, p)
    return loss


def signal_log_loss(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Mean Huber (delta 1 decade) of log10 signal probability (drop + mark), student against
    label, both floored at 1e-8. The student's is computed from its logits (log-sum-exp), so a
    signal of 1e-7 is not lost to 1 - p_enqueue in float32."""
    floor = LOG10_MIN * math.log(10.0)
    log_q = (torch.logsumexp(logits[..., 1:], -1) - torch.logsumexp(logits, -1)).clamp(min=floor)
    log_p = torch.log(p[..., 1:].sum(-1).clamp(min=10.0 ** LOG10_MIN))
    return nnf.huber_loss(log_q / math.log(10.0), log_p / math.log(10.0), delta=1.0)


@torch.no_grad()
def _metrics(mlp: nn.Module, x: torch.Tensor, p: torch.Tensor, is_val: np.ndarray) -> dict[str, float]:
    out = {}
    for name, sel in (("train", ~is_val), ("val", is_val)):
        idx = torch.from_numpy(np.flatnonzero(sel))
        if len(idx) == 0:
            continue
        logits = mlp(x[idx]).unflatten(-1, p.shape[1:])
        q = torch.softmax(logits, -1)
        out[f"{name}_loss"] = float(soft_cross_entropy(logits, p[idx], torch.ones(len(idx))))
        out[f"{name}_mae_p"] = float((q[..., 1:] - p[idx][..., 1:]).abs().mean())
        for cls, errs in log_errors(q, p[idx], torch.ones(len(idx))).items():
            out[f"{name}_log10_err_{cls}"] = median(errs)
    return out


def distill(checkpoint: str | Path, pool: pd.DataFrame | str | Path | Sequence[str | Path], out: str | Path,
            steps: int = 2000, hidden: Sequence[int] = (64, 64), seed: int = 0, early_exit_layers: int = 0,
            threads: int = 1, progress: bool = True, log_weight: float = 0.0) -> dict[str, Any]:
    """Label the pool with the LLM policy, fit the student, save it to `out`; returns metrics."""
    frame = D.as_frame(pool)
    teacher = AqmLlmPolicy(AqmLlmParams(checkpoint=str(checkpoint), early_exit_layers=early_exit_layers,
                                        threads=threads))
    labels = teacher_labels(teacher, frame, progress)
    return _fit_and_save(labels, teacher.stats, out, {"teacher": str(checkpoint), "teacher_settings":
                         teacher.settings}, hidden=hidden, steps=steps, seed=seed, log_weight=log_weight)


def clone_pool(pool: pd.DataFrame | str | Path | Sequence[str | Path], out: str | Path, steps: int = 2000,
               hidden: Sequence[int] = (64, 64), seed: int = 0, log_weight: float = 0.0,
               learn_explored: bool = True) -> dict[str, Any]:
    """The no-LLM ablation (issue 14): the student's MLP trained on the pool's own recorded
    decisions (behaviour cloning), with no LLM anywhere. Beside AQM-LLM and its student in
    `testbed evaluate` it answers whether the LLM adds anything on unseen scenarios. Its
    normalisation statistics are fitted on every episode of the pool (the LLM's on its
    training episodes): they are scales, not labels. With `learn_explored` false the rows where
    the behaviour explored are left out, as AQM-LLM trained with `learn_explored: false` keeps
    them as context only (the MLP has no context, so they go)."""
    frame = D.as_frame(pool)
    eps, raw = D.to_episodes(frame, gamma=0.98)  # gamma is unused: no return conditioning
    stats = F.NormStats.fit(raw, eps.rtg)
    labels = {"x": student_inputs(stats.apply(raw)), "p": eps.actions.astype(np.float32),
              "episode": np.repeat(np.arange(len(eps.names)), eps.end - eps.start)}
    if not learn_explored and eps.explore is not None:
        labels = {k: v[eps.explore == 0] for k, v in labels.items()}
    return _fit_and_save(labels, stats, out, {"teacher": "none: the pool's recorded decisions (behaviour "
                         "cloning, no LLM)"}, hidden=hidden, steps=steps, seed=seed, log_weight=log_weight,
                         learn_explored=learn_explored)


def _fit_and_save(labels: dict[str, np.ndarray], stats: F.NormStats, out: str | Path, source: dict[str, Any],
                  hidden: Sequence[int], steps: int, seed: int, log_weight: float,
                  **extra: Any) -> dict[str, Any]:
    """Fit the student to `labels`, save it with its provenance in `out`; the metadata back."""
    weights, metrics = fit_student(labels, hidden, steps, seed=seed, log_weight=log_weight)
    student = Student({k: v for i, (w, b) in enumerate(weights) for k, v in ((f"w{i}", w), (f"b{i}", b))},
                      stats)
    meta = {**source, "states": len(labels["x"]), "steps": steps, "seed": seed, "log_weight": log_weight,
            **extra, **metrics}
    student.save(out, meta)
    return {"out": str(out), **meta}
