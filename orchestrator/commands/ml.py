"""`testbed pool build | train | distill`: thin wrappers over policies/aqm_llm/.

torch and transformers are imported inside the commands, so `testbed --help` stays fast.
"""

from __future__ import annotations

import json

import click

from orchestrator.errors import UserError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {text!r}") from None


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


@click.command()
@click.option("--pool", "pools", required=True, multiple=True, type=click.Path(exists=True),
              help="pool.parquet, a run directory or a directory of runs (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory.")
@click.option("--steps", default=300, show_default=True)
@click.option("--batch", default=16, show_default=True)
@click.option("--lr", default=3e-4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--window", default=10, show_default=True, help="Steps of context (K).")
@click.option("--lora-rank", default=8, show_default=True, help="0: no LoRA (only encoder and head train).")
@click.option("--lora-alpha", default=16, show_default=True)
@click.option("--lora-targets", default="q_proj,v_proj", show_default=True)
@click.option("--full-finetune", is_flag=True, help="Train every backbone weight instead of LoRA.")
@click.option("--layers", default=0, show_default=True, help="Keep only the first N decoder layers (0: all).")
@click.option("--exits", default="", help="Shallower depths to train for early exit, e.g. 4,8.")
@click.option("--backbone", default="smollm2", show_default=True,
              help="smollm2, tiny, or a local HF causal-LM directory.")
@click.option("--exclude-scenario", "exclude", multiple=True,
              help="Leave this scenario's runs out (held out for evaluation; repeatable).")
@click.option("--resume/--no-resume", default=True, show_default=True)
@click.option("--ckpt-every", default=100, show_default=True)
@click.option("--val-every", default=50, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
def train(pools: tuple[str, ...], out: str, steps: int, batch: int, lr: float, seed: int, window: int,
          lora_rank: int, lora_alpha: int, lora_targets: str, full_finetune: bool, layers: int, exits: str,
          backbone: str, exclude: tuple[str, ...], resume: bool, ckpt_every: int, val_every: int,
          threads: int) -> None:
    """Fine-tune AQM-LLM on an experience pool (return-conditioned offline RL)."""
    import torch

    from policies.aqm_llm.train import train as do_train

    torch.set_num_threads(threads)
    result = do_train(list(pools), out, steps=steps, batch=batch, lr=lr, seed=seed, window=window,
                      lora_rank=lora_rank, lora_alpha=lora_alpha, backbone=backbone, resume=resume,
                      lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
                      full_finetune=full_finetune, layers=layers, exits=_ints(exits),
                      ckpt_every=ckpt_every, val_every=val_every, exclude=exclude)
    if result["main_process"]:  # under `accelerate launch` every process returns here
        click.echo(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--pool", "pools", required=True, multiple=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Student directory.")
@click.option("--steps", default=2000, show_default=True)
@click.option("--hidden", default="64,64", show_default=True, help="Hidden layer sizes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--early-exit-layers", default=0, show_default=True, help="Teacher depth (a trained exit).")
@click.option("--threads", default=2, show_default=True)
def distill(checkpoint: str, pools: tuple[str, ...], out: str, steps: int, hidden: str, seed: int,
            early_exit_layers: int, threads: int) -> None:
    """Distil an AQM-LLM checkpoint into the small aqm-llm-student policy."""
    from policies.aqm_llm.distill import distill as do_distill

    result = do_distill(checkpoint, list(pools), out, steps=steps, hidden=_ints(hidden), seed=seed,
                        early_exit_layers=early_exit_layers, threads=threads)
    click.echo(json.dumps(result, indent=1))


COMMANDS = [pool, train, distill]
