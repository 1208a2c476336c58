"""Return-conditioned offline RL over an experience pool (the NetLLM / Decision Transformer recipe).

Each sample is a window of K consecutive steps of one episode: (return-to-go, state, action).
The model predicts every step's action from what precedes it; the loss is the cross-entropy
between the predicted per-class distribution over {enqueue, drop, mark} and the behaviour
policy's (soft targets), averaged over classes, valid steps and trained exit depths.
Validation: the same loss on held-out episodes (dataset.split).

Runs unchanged on a CPU, one GPU or several under `accelerate launch` (Accelerator handles
devices and gradient sync; each process draws its own batches). Deterministic for a seed:
batches come from a generator seeded by (seed, step, process), the learning rate is a function
of the step, and the only dropout (on action tokens, below) draws from that same generator, so
resuming from a checkpoint continues exactly.

Action-token dropout (`action_dropout`, issue 14 item 3): the behaviour's action changes
rarely between 16 ms updates, so a model that copies the previous action token from its context
gets within 0.005 nats of the loss floor and learns little about the state. Blanking a share
of the context's action tokens (a zero embedding) in training makes the state carry the
prediction; deployed models always see every applied action.
Checkpoints (every ckpt_every steps and at the end) hold the optimizer state as safetensors.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from policies.aqm_llm import checkpoint as ckpt
from policies.aqm_llm.coupled import log_errors, median
from policies.aqm_llm.dataset import Episodes, as_frame, exclude_scenarios, learn_mask, prepare
from policies.aqm_llm.features import ANCHORED_SCALAR_NAMES, SCALAR_NAMES, NormStats
from policies.aqm_llm.model import AqmLlm, ModelConfig
from policies.aqm_llm.reward import DEFAULT as REWARD
from policies.aqm_llm.value import advantage_weights
from policies.errors import PolicyError as UserError

KEEP_CHECKPOINTS = 2


def train(pool: pd.DataFrame | str | Path | Sequence[str | Path], out_dir: str | Path, steps: int = 300,
          batch: int = 16, lr: float = 3e-4, seed: int = 0, lora_rank: int = 8, backbone: str = "smollm2",
          window: int = 10, resume: bool = True, progress: bool = True, gamma: float = 0.98,
          val_frac: float = 0.2, val_every: int = 50, ckpt_every: int = 100, warmup: int = 20,
          val_windows: int = 64, exclude: Sequence[str] = (), deploy: dict[str, Any] | None = None,
          recipe: dict[str, Any] | None = None, horizon_s: float = 0.0, learn_explored: bool = True,
          action_dropout: float = 0.0, awr_beta: float = 0.0, learn_from: Sequence[str] = (),
          **model_args: Any) -> dict[str, Any]:
    """Train AQM-LLM on `pool` (a frame, a pool.parquet, run directories) without the rows of
    the scenarios in `exclude`; returns the losses. `model_args` are further ModelConfig
    fields (lora_alpha, lora_targets, layers, exits, full_finetune, ...). `deploy` (policy
    parameters such as early_exit_layers, precision) is saved with the model as the settings
    `aqm-llm` uses when not told otherwise; `recipe` (the train config) for the model card."""
    from accelerate import Accelerator

    accel = Accelerator()
    out = Path(out_dir)
    names = ANCHORED_SCALAR_NAMES if model_args.get("action") == "anchored" else SCALAR_NAMES
    train_eps, val_eps, stats = prepare(exclude_scenarios(as_frame(pool), exclude), gamma, val_frac, seed,
                                        horizon_s=horizon_s, names=names)
    awr: dict[str, Any] = {}
    if awr_beta > 0:  # advantage-weighted regression (value.py): weights of the training steps
        train_eps.weight, awr = advantage_weights(train_eps.feats, train_eps.rtg, stats, awr_beta, seed=seed)
    if learn_from:  # the other behaviours' steps are context (and the value's data), not targets
        train_eps.weight = learn_mask(train_eps, learn_from) * (
            train_eps.weight if train_eps.weight is not None else 1.0)
    cfg = ModelConfig(backbone=backbone, window=window, lora_rank=lora_rank, **model_args)
    torch.manual_seed(seed)
    model, stats, start, history = _start(cfg, stats, out, resume)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if start:
        _load_optimizer(opt, ckpt.resolve(out))
    model, opt = accel.prepare(model, opt)
    run = _Run(accel, model, opt, stats, cfg, train_eps, val_eps, val_windows)
    run.learn_explored, run.action_dropout = learn_explored, action_dropout
    meta = {"reward": REWARD.to_dict(), "gamma": gamma, "horizon_s": horizon_s,
            "learn_explored": learn_explored, "action_dropout": action_dropout, "awr": awr,
            "learn_from": list(learn_from), "seed": seed,
            "lr": lr,
            "batch": batch,
            "excluded_scenarios": list(exclude), "deploy": dict(deploy or {}), "recipe": recipe or {},
            "pool_episodes": {"train": train_eps.names, "val": val_eps.names}}
    if start == 0:
        history.append({"step": 0, **run.validate()})
    bar = _progress(range(start, steps), start, steps, progress and accel.is_main_process)
    for step in bar:
        _set_lr(opt, lr, step, warmup, steps)
        entry: dict[str, Any] = {"step": step + 1, "train_loss": run.train_step(seed, step, batch)}
        if (step + 1) % val_every == 0 or step + 1 == steps:
            entry.update(run.validate())
        history.append(entry)
        bar.set_postfix(loss=f"{entry['train_loss']:.4f}", val=f"{_last(history, 'val_loss'):.4f}")
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            run.save(out, step + 1, {**meta, "history": history})
    return {**_summary(history, out, accel.unwrap_model(model)), "main_process": accel.is_main_process}


class _Run:
    """The pieces one training step and one validation pass need."""

    def __init__(self, accel: Any, model: Any, opt: Any, stats: NormStats, cfg: ModelConfig,
                 train_eps: Episodes, val_eps: Episodes, val_windows: int) -> None:
        self.accel, self.model, self.opt, self.stats, self.cfg = accel, model, opt, stats, cfg
        self.learn_explored = True  # false: explored steps are context, not targets
        self.action_dropout = 0.0  # share of context action tokens blanked in training
        self.train_eps, self.val_eps = train_eps, val_eps
        self.val_starts = val_eps.grid_starts(cfg.window, val_windows)

    def tensors(self, eps: Episodes, starts: np.ndarray) -> dict[str, torch.Tensor]:
        arrays = eps.gather(starts, self.cfg.window, self.stats)
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.accel.device) for k, v in arrays.items()}

    def loss(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss over exits: what we optimise, loss at the deepest exit: what we report)"""
        out = self.model(**b)
        m = self.accel.unwrap_model(self.model)
        valid = self.targets(b)
        losses = {e: m.action_loss(x, b["actions"], valid) for e, x in out.items()}
        return torch.stack(list(losses.values())).mean(), losses[max(losses)]

    def targets(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """The steps whose action is a training target, with their loss weight (advantage
        weights in training with awr_beta; 1 in validation, which has none)."""
        return b["weight"] if self.learn_explored else b["weight"] * (1 - b["explore"])

    def train_step(self, seed: int, step: int, batch: int) -> float:
        self.model.train()
        rng = np.random.default_rng([seed, step, self.accel.process_index])
        b = self.tensors(self.train_eps, self.train_eps.sample_starts(rng, batch))
        if self.action_dropout > 0:
            keep = rng.random(b["actions"].shape[:2]) >= self.action_dropout
            b["action_keep"] = torch.from_numpy(keep.astype(np.float32)).to(self.accel.device)
        objective, report = self.loss(b)
        self.accel.backward(objective)
        self.accel.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(report.detach())

    @torch.no_grad()
    def validate(self, batch: int = 16) -> dict[str, Any]:
        """The loss on the validation windows (deepest exit), and per behaviour (issue 14, item
        7): the cross-entropy of the applied probabilities against the behaviour's (comparable
        across heads) and the median |log10 p_model - log10 p_label| per class on steps whose
        label signals (a factor of 2 is 0.30), both on steps where the behaviour did not
        explore (its own decisions, not the noise)."""
        self.model.eval()
        m = self.accel.unwrap_model(self.model)
        total, n = 0.0, 0.0
        per: dict[str, dict[str, Any]] = {}
        kinds = np.asarray(self.val_eps.behaviours or ["unknown"] * len(self.val_eps.names))
        for i in range(0, len(self.val_starts), batch):
            starts = self.val_starts[i:i + batch]
            b = self.tensors(self.val_eps, starts)
            out = self.model(**b)[m.depth]
            valid = self.targets(b)
            total += float(m.action_loss(out, b["actions"], valid)) * float(valid.sum())
            n += float(valid.sum())
            valid = b["valid"] * (1 - b["explore"])
            probs = m.probs(out)
            ce = -(b["actions"] * torch.log(probs.clamp(min=1e-12))).sum(-1).mean(-1)
            kind = kinds[np.searchsorted(self.val_eps.end, starts, side="right")]
            for k in set(kind.tolist()):
                sel = torch.from_numpy(kind == k)
                acc = per.setdefault(k, {"ce": 0.0, "steps": 0.0, "l4s": [], "classic": []})
                acc["ce"] += float((ce[sel] * valid[sel]).sum())
                acc["steps"] += float(valid[sel].sum())
                for cls, errs in log_errors(probs[sel], b["actions"][sel], valid[sel]).items():
                    acc[cls] += errs
        by = {k: {"ce": v["ce"] / max(v["steps"], 1.0), "steps": int(v["steps"]),
                  "log10_err_l4s": median(v["l4s"]), "log10_err_classic": median(v["classic"])}
              for k, v in sorted(per.items())}
        return {"val_loss": total / max(n, 1.0), "val_by_behaviour": by}

    def save(self, out: Path, step: int, meta: dict[str, Any]) -> None:
        self.accel.wait_for_everyone()
        if not self.accel.is_main_process:
            return
        name = f"step-{step:06d}"
        opt_tensors, groups = _optimizer_tensors(self.opt)
        ckpt.save_checkpoint(self.accel.unwrap_model(self.model), self.stats, out / name,
                             extra={**meta, "step": step, "optimizer_groups": groups},
                             files={"optimizer.safetensors": opt_tensors})
        (out / "latest.json").write_text(json.dumps({"dir": name, "step": step}))
        for old in sorted(out.glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)


def _start(cfg: ModelConfig, stats: NormStats, out: Path,
           resume: bool) -> tuple[AqmLlm, NormStats, int, list[dict]]:
    """A fresh model, or the one in out/ when resuming (its config must be the same)."""
    if not (resume and (out / "latest.json").is_file()):
        if out.is_dir() and (out / "latest.json").is_file():
            raise UserError(f"{out} already holds a training run; resume it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        return AqmLlm(cfg), stats, 0, []
    model, saved_stats, config = ckpt.load_checkpoint(out)
    if saved_stats.names != stats.names:  # the pool's features are the current set's
        raise UserError(f"{out} holds a run on another feature set ({saved_stats.names[1]} where "
                        f"this run has {stats.names[1]}); use --no-resume or another --out")
    if ModelConfig.from_dict(config["model"]) != cfg:
        raise UserError(f"{out} holds a run with another model config ({config['model']}); "
                        "use the same options, --no-resume, or another --out")
    return model, saved_stats, int(config["step"]), list(config.get("history", []))


def _optimizer_tensors(opt: Any) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    state = opt.state_dict()
    tensors = {f"{i}.{k}": torch.as_tensor(v).reshape(-1) if torch.as_tensor(v).dim() == 0 else v
               for i, per in state["state"].items() for k, v in per.items()}
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def _load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    tensors = load_file(path / "optimizer.safetensors")
    groups = json.loads((path / "config.json").read_text())["optimizer_groups"]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value.reshape(()) if name == "step" else value
    opt.load_state_dict({"state": state, "param_groups": groups})


def _set_lr(opt: Any, lr: float, step: int, warmup: int, steps: int) -> None:
    """Linear warmup then cosine decay to a tenth: a function of the step, so resumable."""
    if step < warmup:
        scale = (step + 1) / warmup
    else:
        scale = 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    for group in opt.param_groups:
        group["lr"] = lr * scale


def _progress(it: range, start: int, total: int, show: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(it, initial=start, total=total, disable=not show, desc="train", dynamic_ncols=True)


def _last(history: list[dict], key: str) -> float:
    return next((h[key] for h in reversed(history) if key in h), math.nan)


def _summary(history: list[dict], out: Path, model: AqmLlm) -> dict[str, Any]:
    train_losses = [h["train_loss"] for h in history if "train_loss" in h]
    val_losses = [h["val_loss"] for h in history if "val_loss" in h]
    return {"steps": history[-1]["step"] if history else 0, "checkpoint": str(ckpt.resolve(out)),
            "first_loss": train_losses[0] if train_losses else math.nan,
            "train_loss": float(np.mean(train_losses[-10:])) if train_losses else math.nan,
            "val_loss_initial": val_losses[0] if val_losses else math.nan,
            "val_loss": val_losses[-1] if val_losses else math.nan,
            "val_by_behaviour": _last(history, "val_by_behaviour"),
            "history": history, **{f"params_{k}": v for k, v in model.counts().items()}}
