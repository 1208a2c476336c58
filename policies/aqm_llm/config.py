"""Training and distillation configs: one small YAML file instead of twenty options.

    testbed train --config models/aqm-llm/train.yaml            # the shipped model's recipe
    testbed train --config models/aqm-llm/train.yaml --steps 50  # an option overrides the file

Keys are the long option names with underscores (`lora_rank`, `ckpt_every`, ...); lists may be
YAML lists or comma-separated strings. Relative paths in the file are relative to the
directory the command runs in (the repository root for `make model`), like the options. An
unknown key, a wrong type or an unreadable file is one line naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import SpecError


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
    lora_rank: int = Field(8, ge=0)
    lora_alpha: int = Field(16, ge=1)
    lora_targets: list[str] = ["q_proj", "v_proj"]
    full_finetune: bool = False
    layers: int = Field(0, ge=0)
    exits: list[int] = Field(default_factory=list)
    backbone: str = "smollm2"
    exclude: list[str] = Field(default_factory=list)
    resume: bool = True
    ckpt_every: int = Field(100, ge=1)
    val_every: int = Field(50, ge=1)
    threads: int = Field(2, ge=1)
    # how the policy runs this model when `aqm-llm` gets no further arguments (policy.py)
    deploy: dict[str, Any] = Field(default_factory=dict)

    _lists = field_validator("pool", "lora_targets", "exits", "exclude", mode="before")(_list)


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

    _lists = field_validator("pool", "hidden", mode="before")(_list)


def load(path: str | Path, kind: type[BaseModel]) -> BaseModel:
    """Read and validate a config file; SpecError (one line) on any problem."""
    from orchestrator.spec import _message, key_path

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), "", f"cannot read the config: {e}") from None
    except yaml.YAMLError as e:  # its str() spans lines; the line number and problem say enough
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise SpecError(str(path), where, f"not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(str(path), "", f"expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise SpecError(str(path), key_path(err["loc"]), _message(err)) from None


def merge(base: BaseModel, overrides: dict[str, Any], source: str) -> BaseModel:
    """`base` with the options the user gave on the command line (already parsed) on top."""
    from orchestrator.spec import _message, key_path

    try:
        return type(base).model_validate({**base.model_dump(), **overrides})
    except ValidationError as e:
        err = e.errors()[0]
        raise SpecError(source, key_path(err["loc"]), _message(err)) from None
