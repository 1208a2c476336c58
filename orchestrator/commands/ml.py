"""`testbed pool build | train | distill`: thin wrappers over policies/aqm_llm/.

torch and transformers are imported inside the commands, so `testbed --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from orchestrator.errors import UserError


@click.group()
def pool() -> None:
    """Experience pools for AQM-LLM training."""


@pool.command("build")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="pool.parquet to write.")
def pool_build(runs: tuple[str, ...], out: str) -> None:
    """Pool the control-loop rows of RUNS (run directories, directories of runs, or pool files)."""
    import pandas as pd

    from policies.aqm_llm.dataset import build_pool

    path = build_pool(runs, out)
    frame = pd.read_parquet(path, columns=["episode"])
    click.echo(f"pool: {path} ({len(frame)} rows, {frame['episode'].nunique()} episodes)")


def _given(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options typed on the command line (not defaults): they override the config file."""
    from click.core import ParameterSource

    return {k: v for k, v in values.items()
            if k != "config" and ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}


def _settings(ctx: click.Context, kind: type, config: str | None, values: dict[str, Any]) -> Any:
    """Config file (or defaults), then command-line options on top; one line on a bad key."""
    from orchestrator.spec import mlconfig as cfgmod

    base = cfgmod.load(config, kind) if config else kind()
    return cfgmod.merge(base, _given(ctx, values), config or "command line")


@click.command()
@click.option("--config", type=click.Path(dir_okay=False),
              help="YAML file of these settings (models/aqm-llm-coupled/train.yaml); options override it.")
@click.option("--pool", multiple=True, type=click.Path(exists=True),
              help="pool.parquet, a run directory or a directory of runs (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), help="Checkpoint directory.")
@click.option("--export", type=click.Path(file_okay=False),
              help="Also copy the final model, without optimizer state, here (models/aqm-llm-anchored).")
@click.option("--steps", type=int, help="[300]")
@click.option("--batch", type=int, help="[16]")
@click.option("--lr", type=float, help="[3e-4]")
@click.option("--seed", type=int, help="[0]")
@click.option("--window", type=int, help="Steps of context (K). [10]")
@click.option("--lora-rank", type=int, help="0: no LoRA (only encoder and head train). [8]")
@click.option("--lora-alpha", type=int, help="[16]")
@click.option("--lora-targets", help="[q_proj,v_proj]")
@click.option("--full-finetune/--lora", default=None, help="Train every backbone weight instead of LoRA.")
@click.option("--layers", type=int, help="Keep only the first N decoder layers (0: all). [0]")
@click.option("--exits", help="Shallower depths to train for early exit, e.g. 4,8.")
@click.option("--backbone", help="smollm2 (pretrained), smollm2-random (same architecture, random weights: "
                   "the pretraining ablation), tiny, or a local HF causal-LM directory. [smollm2]")
@click.option("--horizon-s", type=float,
              help="Discount returns per second with this horizon (s), not gamma per row. [0: gamma]")
@click.option("--learn-explored/--skip-explored", default=None,
              help="Learn the explored steps' actions too, or keep them as context only. [learn]")
@click.option("--action-dropout", type=float,
              help="Share of context action tokens blanked in training (0-1). [0]")
@click.option("--awr-beta", type=float,
              help="Advantage-weighted regression temperature, in advantage std (0: off). [0]")
@click.option("--action", type=click.Choice(["softmax", "coupled", "anchored"]),
              help="Action head: softmax (per-class enqueue/drop/mark), coupled (log10 p' + "
                   "gate + k, DualPI2's coupling built in) or anchored (a bounded correction to "
                   "DualPI2's own p'). [softmax]")
@click.option("--anchor-span", type=float,
              help="Anchored head: the most p' departs from DualPI2's, in decades. [1.0]")
@click.option("--exclude-scenario", "exclude", multiple=True,
              help="Leave this scenario's runs out (held out for evaluation; repeatable).")
@click.option("--resume/--no-resume", default=None, help="[resume]")
@click.option("--ckpt-every", type=int, help="[100]")
@click.option("--val-every", type=int, help="[50]")
@click.option("--threads", type=int, help="torch CPU threads. [2]")
@click.pass_context
def train(ctx: click.Context, **values: Any) -> None:
    """Fine-tune AQM-LLM on an experience pool (return-conditioned offline RL)."""
    from orchestrator.spec.mlconfig import TrainConfig

    c = _settings(ctx, TrainConfig, values["config"], values)
    if not c.pool or not c.out:
        raise UserError("train needs a pool and an out directory (--pool/--out, or pool:/out: "
                        "in the --config file)")
    missing = [p for p in c.pool if not Path(p).exists()]
    if missing:
        raise UserError(f"pool {missing[0]}: no such file or directory")
    import torch

    from policies.aqm_llm.train import train as do_train

    torch.set_num_threads(c.threads)
    result = do_train(list(c.pool), c.out, steps=c.steps, batch=c.batch, lr=c.lr, seed=c.seed,
                      window=c.window, gamma=c.gamma, horizon_s=c.horizon_s, lora_rank=c.lora_rank,
                      learn_explored=c.learn_explored, action_dropout=c.action_dropout,
                      awr_beta=c.awr_beta, learn_from=tuple(c.learn_from),
                      lora_alpha=c.lora_alpha,
                      backbone=c.backbone, resume=c.resume, lora_targets=tuple(c.lora_targets),
                      full_finetune=c.full_finetune, layers=c.layers, exits=tuple(c.exits), action=c.action,
                      anchor_span=c.anchor_span,
                      ckpt_every=c.ckpt_every, val_every=c.val_every, exclude=tuple(c.exclude),
                      deploy=c.deploy, recipe=c.model_dump())
    if result["main_process"]:  # under `accelerate launch` every process returns here
        if c.export:
            from policies.aqm_llm.checkpoint import export

            result["exported"] = str(export(c.out, c.export))
        click.echo(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))


@click.command()
@click.option("--config", type=click.Path(dir_okay=False),
              help="YAML file of these settings (models/aqm-llm-coupled-student/distill.yaml).")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--pool", multiple=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(file_okay=False), help="Student directory.")
@click.option("--steps", type=int, help="[2000]")
@click.option("--hidden", help="Hidden layer sizes. [64,64]")
@click.option("--seed", type=int, help="[0]")
@click.option("--early-exit-layers", type=int, help="Teacher depth (a trained exit). [0: all]")
@click.option("--threads", type=int, help="[2]")
@click.option("--log-weight", type=float,
              help="Weight of the log10 signal-probability term beside the cross-entropy. [0]")
@click.option("--learn-explored/--skip-explored", default=None,
              help="With --no-teacher: learn the pool's explored rows too, or leave them out. [learn]")
@click.option("--no-teacher", is_flag=True, default=None,
              help="The no-LLM ablation: fit the same MLP to the pool's own decisions (no checkpoint).")
@click.pass_context
def distill(ctx: click.Context, **values: Any) -> None:
    """Distil an AQM-LLM checkpoint into the small aqm-llm-student policy."""
    from orchestrator.spec.mlconfig import DistillConfig

    c = _settings(ctx, DistillConfig, values["config"], values)
    if c.no_teacher:
        if not c.pool or not c.out or c.checkpoint:
            raise UserError("distill --no-teacher needs a pool and an out directory, and no checkpoint")
        from policies.aqm_llm.distill import clone_pool

        result = clone_pool(list(c.pool), c.out, steps=c.steps, hidden=tuple(c.hidden), seed=c.seed,
                            log_weight=c.log_weight, learn_explored=c.learn_explored)
        click.echo(json.dumps(result, indent=1))
        return
    if not c.checkpoint or not c.pool or not c.out:
        raise UserError("distill needs a checkpoint, a pool and an out directory "
                        "(options, or keys of the --config file)")
    from policies.aqm_llm.distill import distill as do_distill

    result = do_distill(c.checkpoint, list(c.pool), c.out, steps=c.steps, hidden=tuple(c.hidden),
                        seed=c.seed, early_exit_layers=c.early_exit_layers, threads=c.threads,
                        log_weight=c.log_weight)
    click.echo(json.dumps(result, indent=1))


COMMANDS = [pool, train, distill]
