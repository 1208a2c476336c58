"""AqmLlm: state encoder + pretrained decoder (fed inputs_embeds) + L4S-LM head.

The NetLLM recipe: a window of K steps, each step T = 9 tokens
    [return-to-go] [7 state tokens] [action]
and the head reads the hidden state at each step's last state token, so the action of step t
is predicted from the returns, states and actions before it plus the current return and
state (causal attention hides the action token itself).

Fine-tuning: the backbone is frozen and LoRA adapters (peft) are added to its attention
projections, or (full_finetune) every backbone weight trains, as the paper did for GPT-2.

Early exit: `layers` keeps only the first N decoder layers (fixed at training time); `exits`
adds shallower depths whose normed hidden state also feeds the (shared) head during training,
so the deployed policy may stop at any of them (`set_exit`).

Incremental decoding for deployment: `step_tokens` / `action_token` embed one step, `decode`
runs new tokens through the backbone on top of a KV cache (policy.py keeps the context).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from policies.aqm_llm import anchored, coupled
from policies.aqm_llm import backbone as bb
from policies.aqm_llm.anchored import AnchoredHead
from policies.aqm_llm.coupled import CoupledHead
from policies.aqm_llm.encoder import N_STATE_TOKENS, StateEncoder
from policies.aqm_llm.features import Features
from policies.aqm_llm.head import ActionEmbedding, L4SHead, ReturnEmbedding
from policies.errors import PolicyError as UserError

TOKENS_PER_STEP = 1 + N_STATE_TOKENS + 1
PREDICT_AT = N_STATE_TOKENS  # offset of a step's last state token (the return token is 0)
NORM_PATHS = ("norm", "ln_f", "final_layernorm", "decoder.final_layer_norm")
PRECISIONS = ("float32", "bfloat16", "int8")
ACTIONS = ("softmax", "coupled", "anchored")
LOG_SPACE = ("coupled", "anchored")  # heads whose raw outputs are coupled.py's layout


@dataclass
class ModelConfig:
    backbone: str = "smollm2"  # "smollm2", "smollm2-random", "tiny" or a local HF causal-LM directory
    window: int = 10  # K steps of context
    layers: int = 0  # keep the first N decoder layers; 0 keeps all
    exits: tuple[int, ...] = ()  # shallower depths trained too, for early exit at inference
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_dropout: float = 0.0
    full_finetune: bool = False
    hidden: int = 128  # width of the encoder's MLPs
    channels: int = 16  # 1D conv channels per series
    # "softmax": per-class {enqueue, drop, mark} logits (head.L4SHead, the shipped model);
    # "coupled": gate + log10 p' + k, DualPI2's coupling built in (coupled.py, issue 14);
    # "anchored": a bounded correction to DualPI2's own p', run beside it (anchored.py)
    action: str = "softmax"
    anchor_span: float = 1.0  # anchored head: the most it departs from DualPI2's p', in decades

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        return cls(**d)


class AqmLlm(nn.Module):
    """State encoder -> decoder over inputs_embeds -> L4S-LM head (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        decoder = backbone if backbone is not None else bb.load_backbone(cfg.backbone, cfg.layers)
        self.depth, width, scale = bb.n_layers(decoder), decoder.config.hidden_size, bb.embed_std(decoder)
        self.exits = sorted(set(cfg.exits) | {self.depth})
        if not 1 <= self.exits[0]:
            raise UserError(f"exits {cfg.exits}: depths must be between 1 and {self.depth}")
        if self.exits[-1] > self.depth:
            raise UserError(f"exits {cfg.exits}: the backbone has only {self.depth} layers")
        self.encoder = StateEncoder(width, cfg.hidden, cfg.channels, scale)
        self.rtg_embed = ReturnEmbedding(width, scale=scale)
        self.action_embed = ActionEmbedding(width, scale=scale)
        if cfg.action not in ACTIONS:
            raise UserError(f"action {cfg.action!r}: expected one of {', '.join(ACTIONS)}")
        self.head = (AnchoredHead(width, cfg.anchor_span) if cfg.action == "anchored"
                     else CoupledHead(width) if cfg.action == "coupled" else L4SHead(width))
        self._decoder = (decoder,)  # unwrapped and unregistered: its weights live in .backbone
        self.backbone = self._finetunable(decoder)
        self._full_layers = bb.set_depth(decoder, self.depth)
        self.precision, self.compute_dtype = "float32", torch.float32

    @property
    def decoder(self) -> nn.Module:
        """The backbone without the peft wrapper: layer list, final norm, config."""
        return self._decoder[0]

    def _finetunable(self, decoder: nn.Module) -> nn.Module:
        if self.cfg.full_finetune:
            return decoder.requires_grad_(True)
        decoder.requires_grad_(False)
        if self.cfg.lora_rank <= 0:
            return decoder
        from peft import LoraConfig, get_peft_model

        c = self.cfg
        lora = LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=list(c.lora_targets))
        try:
            with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                warnings.simplefilter("ignore", FutureWarning)
                return get_peft_model(decoder, lora)
        except ValueError as e:
            raise UserError(f"LoRA targets {self.cfg.lora_targets}: {e}") from None

    # ---- training: whole windows
    def embed(self, rtg: torch.Tensor, scalars: torch.Tensor, series: torch.Tensor, mask: torch.Tensor,
              actions: torch.Tensor, action_keep: torch.Tensor | None = None) -> torch.Tensor:
        """[B, K] windows of returns, states, actions -> [B, K * TOKENS_PER_STEP, width];
        `action_keep` [B, K] (training only): 0 blanks that step's action token (train.py)."""
        acts = self.action_embed(actions)
        if action_keep is not None:
            acts = acts * action_keep.unsqueeze(-1)
        tokens = [self.rtg_embed(rtg).unsqueeze(2), self.encoder(scalars, series, mask), acts.unsqueeze(2)]
        return torch.cat(tokens, dim=2).flatten(1, 2)

    def forward(self, rtg: torch.Tensor, scalars: torch.Tensor, series: torch.Tensor, mask: torch.Tensor,
                actions: torch.Tensor, action_keep: torch.Tensor | None = None,
                anchor: torch.Tensor | None = None, **_: Any) -> dict[int, torch.Tensor]:
        """Head outputs of each step's action, per exit depth: logits [B, K, 2, 3] (softmax)
        or raw [B, K, 3] (coupled, anchored: which needs `anchor` [B, K], the anchor's log10
        p'); `probs` turns either into probabilities."""
        if bb.n_layers(self.decoder) != self.depth:
            raise RuntimeError("forward() runs every trained exit: call set_exit(model.depth) first")
        out = self.backbone(inputs_embeds=self.embed(rtg, scalars, series, mask, actions, action_keep),
                            output_hidden_states=len(self.exits) > 1)
        logits = {}
        for e in self.exits:
            hidden = out.last_hidden_state if e == self.depth else self._final_norm()(out.hidden_states[e])
            logits[e] = self.head_out(hidden[:, PREDICT_AT::TOKENS_PER_STEP], anchor)
        return logits

    def head_out(self, hidden: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        """The head on hidden states [..., width]; the anchored head also takes the anchor's
        log10 p' [...]."""
        if self.cfg.action != "anchored":
            return self.head(hidden)
        if anchor is None:
            raise RuntimeError("the anchored head needs the anchor's log10 p' (dataset: 'anchor')")
        return self.head(hidden, anchor)

    def _final_norm(self) -> nn.Module:
        for dotted in NORM_PATHS:
            module: Any = self.decoder
            for part in dotted.split("."):
                module = getattr(module, part, None)
            if isinstance(module, nn.Module):
                return module
        raise UserError(f"backbone {type(self.decoder).__name__}: no final norm found; "
                        "exits at shallower depths need one")

    # ---- deployment: one step at a time
    def set_exit(self, depth: int) -> None:
        """Run only the first `depth` layers from now on (must be a trained exit)."""
        if depth not in self.exits:
            raise UserError(f"early exit after {depth} layers: the model was trained for exits {self.exits}")
        bb.set_depth(self.decoder, depth, full=self._full_layers)

    def for_inference(self, precision: str) -> None:
        """Deployment only, in place: merge LoRA into the backbone's weights, then cast the
        backbone to bfloat16 or quantise its Linear layers to int8 (dynamic quantisation:
        int8 weights, activations quantised on the fly; 3x faster here, as a small forward
        pass on a CPU is bound by reading the weights). The model cannot be trained or saved
        afterwards. float32 changes nothing."""
        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if precision == "float32" or precision == self.precision:
            return
        if self.precision != "float32":
            raise UserError(f"the model is already prepared for {self.precision}")
        if hasattr(self.backbone, "merge_and_unload"):
            self.backbone = self.backbone.merge_and_unload()
        if precision == "bfloat16":
            self.backbone.to(torch.bfloat16)
            self.compute_dtype = torch.bfloat16
        else:
            with warnings.catch_warnings():  # torch.ao quantisation is deprecated, still here in 2.13
                warnings.simplefilter("ignore")
                torch.ao.quantization.quantize_dynamic(self.backbone, {nn.Linear}, dtype=torch.qint8,
                                                       inplace=True)
        self.precision = precision

    def step_tokens(self, rtg: float, feats: Features) -> torch.Tensor:
        """[1 + N_STATE_TOKENS, width]: the return token and state tokens of one step."""
        s, ser, m = (torch.from_numpy(x[0]) for x in feats)
        return torch.cat([self.rtg_embed(torch.tensor([rtg])), self.encoder(s, ser, m)], dim=0)

    def action_token(self, probs: torch.Tensor) -> torch.Tensor:
        """[2, 3] -> [1, width]"""
        return self.action_embed(probs.unsqueeze(0))

    def decode(self, tokens: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Append tokens [n, width] after `cache` (None: no cache); last hidden state, new cache."""
        out = self.backbone(inputs_embeds=tokens.unsqueeze(0).to(self.compute_dtype), cache=cache,
                            use_cache=cache is not None)
        return out.last_hidden_state[0, -1].float(), out.cache

    def probs(self, out: torch.Tensor) -> torch.Tensor:
        """Head outputs -> per-class (enqueue, drop, mark) probabilities [..., 2, 3]."""
        return coupled.probs(out) if self.cfg.action in LOG_SPACE else torch.softmax(out, dim=-1)

    def base(self, out: torch.Tensor) -> tuple[float, float]:
        """(p', k) of one step's head outputs; NaN for the softmax head, which has neither."""
        if self.cfg.action not in LOG_SPACE:
            return math.nan, math.nan
        p_base, k = coupled.base_probability(out)
        return float(p_base), float(k)

    def action_loss(self, out: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The training loss of head outputs against the behaviour's actions [..., 2, 3]."""
        if self.cfg.action == "anchored":
            return coupled.coupled_loss(out, actions, valid * anchored.mask(out), gate_loss=False)
        if self.cfg.action == "coupled":
            return coupled.coupled_loss(out, actions, valid)
        return soft_cross_entropy(out, actions, valid)

    def counts(self) -> dict[str, int]:
        return {"total": sum(p.numel() for p in self.parameters()),
                "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad)}


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid steps and both classes of -sum_a target_a log softmax(logits)_a."""
    ce = -(target * nnf.log_softmax(logits, dim=-1)).sum(-1).mean(-1)
    return (ce * valid).sum() / valid.sum().clamp(min=1.0)
