"""Training and distillation configs: one small YAML file instead of twenty options.

    testbed train --config models/aqm-llm-coupled/train.yaml            # the shipped model's recipe
    testbed train --config models/aqm-llm-coupled/train.yaml --steps 50  # an option overrides the file

Keys are the long option names with underscores (`lora_rank`, `ckpt_every`, ...); lists may be
YAML lists or comma-separated strings. Relative paths in the file are relative to the
directory the command runs in (the repository root for `make model`), like the options. An
unknown key, a wrong type or an unreadable file is one line naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.spec.load import load_model, validate

# policies.aqm_llm.backbone.NAMES, spelt out so reading a config does not import torch
# (tests/test_aqm_llm_random.py checks the two agree)
BACKBONES = ("smollm2", "smollm2-random", "tiny")


def _list(value: Any) -> Any:
    """'a,b' or ['a', 'b'] or 'a' -> ['a', 'b'] / ['a']; anything else is pydantic's to check."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, int | float):
        return [value]
    return value


class TrainConfig(BaseModel):
    """What `testbed train` needs; defaults equal the options' defaults."""

    model_config = ConfigDict(extra="forbid")
    pool: list[str] = Field(default_factory=list)
    out: str = ""
    export: str = ""  # also copy the final model (without optimizer state) here
    steps: int = Field(300, ge=1)
    batch: int = Field(16, ge=1)
    lr: float = Field(3e-4, gt=0)
    seed: int = 0
    window: int = Field(10, ge=1)
    gamma: float = Field(0.98, gt=0, le=1)
    # > 0: discount returns per second with this horizon instead of gamma per row (issue 14)
    horizon_s: float = Field(0.0, ge=0)
    # false: steps where the behaviour explored stay in the context but are not targets
    learn_explored: bool = True
    # share of the context's action tokens blanked in training, so the model cannot just copy
    # the previous action (issue 14, item 3; train.py)
    action_dropout: float = Field(0.0, ge=0, lt=1)
    # advantage-weighted regression: weight each step by exp(A / (beta std A)) with a value
    # function of the state alone (issue 14, item 3; value.py); 0 turns it off
    awr_beta: float = Field(0.0, ge=0, le=100)
    # learn the actions of these behaviours only (the rest: context and the value's data); empty: all
    learn_from: list[str] = Field(default_factory=list)
    lora_rank: int = Field(8, ge=0)
    lora_alpha: int = Field(16, ge=1)
    lora_targets: list[str] = ["q_proj", "v_proj"]
    full_finetune: bool = False
    layers: int = Field(0, ge=0)
    exits: list[int] = Field(default_factory=list)
    # "smollm2" (pretrained), "smollm2-random" (its architecture, random weights: the
    # pretraining ablation), "tiny" (tests) or a local Hugging Face causal-LM directory
    backbone: str = "smollm2"
    # the action head: "softmax" (per-class enqueue/drop/mark, the first model), "coupled"
    # (DualPI2's base probability in log space with the coupling built in; issue 14) or
    # "anchored" (a bounded correction to DualPI2's own p', run beside the model)
    action: Literal["softmax", "coupled", "anchored"] = "softmax"
    # anchored: how far p' may depart from DualPI2's, in decades (0.3: within 2x)
    anchor_span: float = Field(1.0, gt=0.0, le=4.0)
    exclude: list[str] = Field(default_factory=list)
    resume: bool = True
    ckpt_every: int = Field(100, ge=1)
    val_every: int = Field(50, ge=1)
    threads: int = Field(2, ge=1)
    # how the policy runs this model when `aqm-llm` gets no further arguments (policy.py)
    deploy: dict[str, Any] = Field(default_factory=dict)

    _lists = field_validator("pool", "lora_targets", "exits", "exclude", "learn_from", mode="before")(_list)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        """Caught here, a misspelt name is one line naming the file and key, before any
        pool is read; the model directory's contents are checked when it loads."""
        if value in BACKBONES or Path(value).expanduser().is_dir():
            return value
        raise ValueError(f"{value!r}: no such directory, and not one of {', '.join(BACKBONES)}")


class DistillConfig(BaseModel):
    """What `testbed distill` needs."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str = ""
    pool: list[str] = Field(default_factory=list)
    out: str = ""
    steps: int = Field(2000, ge=1)
    hidden: list[int] = [64, 64]
    seed: int = 0
    early_exit_layers: int = Field(0, ge=0)
    threads: int = Field(2, ge=1)
    no_teacher: bool = False  # the no-LLM ablation: learn the pool's own decisions
    # weight of a log-space term (log10 of each class's signal probability) beside the
    # cross-entropy, which cannot see errors at small probabilities (distill.py)
    log_weight: float = Field(0.0, ge=0)
    # with no_teacher: false leaves out the rows where the behaviour explored
    learn_explored: bool = True

    _lists = field_validator("pool", "hidden", mode="before")(_list)


def load(path: str | Path, kind: type[BaseModel]) -> BaseModel:
    """Read and validate a config file; SpecError (one line) on any problem. An empty file is
    the defaults."""
    try:
        empty = Path(path).is_file() and not Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        empty = False  # load_model says what is wrong with it
    return kind() if empty else load_model(path, kind, what="a mapping of keys to values")


def merge(base: BaseModel, overrides: dict[str, Any], source: str) -> BaseModel:
    """`base` with the options the user gave on the command line (already parsed) on top."""
    return validate(type(base), {**base.model_dump(), **overrides}, source)
