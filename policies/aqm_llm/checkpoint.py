"""A checkpoint is a directory of safetensors and JSON; loading it never unpickles.

    config.json                 format, ModelConfig, backbone shape, reward weights, gamma, ...
    stats.json                  normalisation statistics (features.NormStats)
    encoder.safetensors         StateEncoder
    head.safetensors            L4S-LM head + return and action embeddings
    adapter_model.safetensors   LoRA weights in peft's layout (+ adapter_config.json)
    backbone.safetensors        only after full fine-tuning (else the pretrained weights apply)

A training run's output directory holds step-NNNNNN/ checkpoints and latest.json naming the
newest; `load_checkpoint` accepts either. A directory holding any pickle-format file is
refused outright: torch.load and friends can run arbitrary code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policies.aqm_llm.features import NormStats
from policies.errors import PolicyError as UserError

if TYPE_CHECKING:  # torch is imported on use, so the student policy loads without it
    from policies.aqm_llm.model import AqmLlm

FORMAT = "aqm-llm/1"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
HEAD_PARTS = ("head.", "rtg_embed.", "action_embed.")


def refuse_pickles(path: Path) -> None:
    found = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise UserError(f"checkpoint {path}: refusing a directory that holds pickle files "
                        f"({', '.join(found)}); only safetensors and json are loaded")


def read_json(path: Path, what: str = "checkpoint") -> dict[str, Any]:
    """A JSON object from `path`, or one line naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{what} {path.parent}: {path.name} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path.parent}: {path.name}: expected a JSON object, "
                        f"got {type(data).__name__}")
    return data


def read_stats(directory: Path, what: str = "checkpoint") -> NormStats:
    """The normalisation statistics saved beside a model (stats.json), or one line."""
    try:
        return NormStats.from_json((directory / "stats.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{what} {directory}: bad stats.json: {e}") from None


def resolve(path: str | Path) -> Path:
    """The checkpoint directory itself, or the one latest.json of a training directory names."""
    p = Path(path).expanduser()
    if p.is_file():
        raise UserError(f"checkpoint {p}: a file; expected a checkpoint directory of safetensors and "
                        "JSON (testbed train --out)")
    if not p.is_dir():
        raise UserError(f"checkpoint {p}: no such directory")
    if not (p / "config.json").is_file() and (p / "latest.json").is_file():
        name = read_json(p / "latest.json").get("dir")
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise UserError(f"checkpoint {p}: latest.json key 'dir': expected a step-NNNNNN name")
        p = p / name
    if not (p / "config.json").is_file():
        raise UserError(f"checkpoint {p}: no config.json (not an AQM-LLM checkpoint)")
    return p


def save_checkpoint(model: AqmLlm, stats: NormStats, out: str | Path, extra: dict[str, Any] | None = None,
                    files: dict[str, dict] | None = None) -> Path:
    """Write atomically: into a sibling temporary directory, then rename over `out`.
    `files` adds more safetensors files (name -> tensors), e.g. the optimizer state."""
    from safetensors.torch import save_file

    if model.precision != "float32":
        raise UserError(f"a model prepared for {model.precision} inference cannot be saved")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = {"format": FORMAT, "model": model.cfg.to_dict(), "width": model.decoder.config.hidden_size,
              "depth": model.depth, "exits": model.exits, **(extra or {})}
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    (tmp / "stats.json").write_text(stats.to_json())
    for name, tensors in {**_weights(model), **(files or {})}.items():
        if tensors:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / name)
    if model.cfg.lora_rank > 0 and not model.cfg.full_finetune:
        adapter = model.backbone.peft_config["default"].to_dict()
        (tmp / "adapter_config.json").write_text(json.dumps(adapter, indent=1, default=list))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _weights(model: AqmLlm) -> dict[str, dict]:
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    files = {"encoder.safetensors": {k: v for k, v in own.items() if k.startswith("encoder.")},
             "head.safetensors": {k: v for k, v in own.items() if k.startswith(HEAD_PARTS)}}
    if model.cfg.full_finetune:
        files["backbone.safetensors"] = dict(model.decoder.state_dict())
    elif model.cfg.lora_rank > 0:
        from peft import get_peft_model_state_dict

        files["adapter_model.safetensors"] = get_peft_model_state_dict(model.backbone)
    return files


def load_checkpoint(path: str | Path,
                    backbone: str | None = None) -> tuple[AqmLlm, NormStats, dict[str, Any]]:
    """(model in eval mode, normalisation stats, config dict). `backbone` overrides where the
    backbone is found (the weights must match the one it was trained on)."""
    from policies.aqm_llm.model import AqmLlm, ModelConfig

    p = resolve(path)
    refuse_pickles(p)
    config = read_json(p / "config.json")
    if config.get("format") != FORMAT:
        raise UserError(f"checkpoint {p}: config.json key 'format': {config.get('format')!r}, "
                        f"expected {FORMAT!r}")
    for key, kind in (("model", dict), ("width", int), ("depth", int)):
        if not isinstance(config.get(key), kind):
            raise UserError(f"checkpoint {p}: config.json key {key!r}: expected a {kind.__name__}")
    try:
        cfg = ModelConfig.from_dict(config["model"])
    except TypeError as e:
        raise UserError(f"checkpoint {p}: config.json key 'model': {e}") from None
    if backbone:
        cfg.backbone = backbone
    model = AqmLlm(cfg)
    shape = (model.decoder.config.hidden_size, model.depth)
    if shape != (config["width"], config["depth"]):
        raise UserError(f"checkpoint {p}: trained on a backbone of width {config['width']} and depth "
                        f"{config['depth']}; {cfg.backbone!r} has width {shape[0]} and depth {shape[1]}")
    _load_weights(model, p)
    return model.eval(), read_stats(p), config


def _load_weights(model: AqmLlm, p: Path) -> None:
    own: dict[str, Any] = {}
    for name in ("encoder.safetensors", "head.safetensors"):
        own.update(_need(p, name))
    try:
        missing, unexpected = model.load_state_dict(own, strict=False)
    except RuntimeError as e:
        raise UserError(f"checkpoint {p}: weights do not fit the model: {_detail(e)}") from None
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise UserError(f"checkpoint {p}: weights do not fit the model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    try:
        if model.cfg.full_finetune:
            model.decoder.load_state_dict(_need(p, "backbone.safetensors"))
            return
        if model.cfg.lora_rank <= 0:
            return
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model.backbone, _need(p, "adapter_model.safetensors"))
    except RuntimeError as e:
        raise UserError(f"checkpoint {p}: backbone weights do not fit: {_detail(e)}") from None
    if result.unexpected_keys:
        raise UserError(f"checkpoint {p}: adapter does not fit: {result.unexpected_keys[:3]}")


def _detail(e: Exception) -> str:
    """torch lists every mismatching tensor on a line of its own: the first one says enough."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)


def _need(p: Path, name: str) -> dict:
    if not (p / name).is_file():
        raise UserError(f"checkpoint {p}: {name} is missing")
    return load_safetensors(p / name)


def load_safetensors(path: Path, numpy: bool = False) -> dict:
    """Tensors of one safetensors file; a file of another format (a pickle renamed, a
    truncated download) is one line naming it, and is never unpickled."""
    if numpy:
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types (and OSError)
        raise UserError(f"{path}: not a valid safetensors file ({type(e).__name__}: {e})") from None


SHIPPED_FILES = ("config.json", "stats.json", "encoder.safetensors", "head.safetensors",
                 "adapter_model.safetensors", "adapter_config.json", "backbone.safetensors")


def export(path: str | Path, dest: str | Path) -> Path:
    """Copy a checkpoint's model files (not the optimizer state, which only resuming needs)
    into `dest`, next to whatever else lives there (a model card, the recipe)."""
    src = resolve(path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = read_json(src / "config.json")
    config.pop("optimizer_groups", None)
    for name in SHIPPED_FILES:
        if name == "config.json":
            (dest / name).write_text(json.dumps(config, indent=1))
        elif (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
        elif (dest / name).is_file():
            (dest / name).unlink()  # left from another kind of model: it would be loaded
    return dest
