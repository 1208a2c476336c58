"""AqmLlmPolicy ("aqm-llm"): the fine-tuned model in the control loop, one forward pass per tupdate.

Context across steps. The model sees the steps since the last *refill*, at most `window` of
them (training windows start anywhere in an episode, so every context length from 1 to the
window is in distribution). With the KV cache, an update feeds only the new tokens: the
previous step's action token plus this step's return and state tokens (9 tokens, 8 at the
first step), on top of the cached keys and values. When the next step would not fit, the
context is *refilled*: the last `refill` - 1 steps are re-encoded from scratch into a new
cache. The default refill = 1 restarts the context at the current step, so a refill costs
no more than an ordinary update and the deadline sees no spikes; the state tokens still
carry 16 intervals of per-class history. A larger refill keeps more context at the price of
a slower update every window - refill + 1 steps (bench/llm_latency.py measures both).
We do not slide the cache instead: cached keys carry absolute rotary positions, so a slid
cache needs ever-growing positions (float32 RoPE angles lose precision after hours of 60
updates a second) and its kept entries would have attended to steps that are gone, a context
the model never saw in training. Refilling is exact: with kv_cache off the same context is
re-encoded every update and the decisions agree within float tolerance.

Speed: early_exit_layers runs a trained shallower exit; precision=int8 merges LoRA and
quantises the backbone's Linear layers (bfloat16 casts it); see bench/llm_latency.py.

Return conditioning: every step asks for the same return, `target_return` (default: the
training pool's 90th percentile of returns-to-go, stored with the model).

The L4S class keeps a native step threshold (l4s_step_ms, like DualPI2's 1 ms) unless set
to 0: the model's probabilities come on top, as DualPI2's coupled probability does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from policies import base
from policies.base import CLASSES, ClassDecision, Decision, Params, Policy, QueueConfig, QueueState


def _param(default: Any, help_: str) -> Any:
    return field(default=default, metadata={"help": help_})


@dataclass
class AqmLlmParams(Params):
    checkpoint: str = _param("", "checkpoint directory (testbed train --out)")
    early_exit_layers: int = _param(0, "run only N decoder layers (a trained exit); 0: all")
    kv_cache: bool = _param(True, "keep keys/values across updates")
    refill: int = _param(1, "steps kept when the context window is full (1: restart from this step)")
    precision: str = _param("float32", "backbone at float32, bfloat16 or int8 (LoRA merged first)")
    deadline_ms: float = _param(16.0, "decision deadline (the control loop enforces it)")
    threads: int = _param(1, "torch CPU threads")
    target_return: float = _param(math.nan, "return to condition on; NaN: the stored target")
    l4s_step_ms: float = _param(1.0, "L4S step-mark threshold in ms; 0 disables")
    backbone: str = _param("", "override where the checkpoint's backbone is found")


class Context:
    """The token context of the deployed model (see the module docstring)."""

    def __init__(self, model: Any, window: int, refill: int, use_cache: bool) -> None:
        self.model, self.window, self.refill, self.use_cache = model, window, refill, use_cache
        self.steps: list[Any] = []  # [TOKENS_PER_STEP, width] per complete step
        self.pending: Any = None  # tokens of the step awaiting its action
        self.cache: Any = None
        self.refills = 0

    def decide(self, tokens: Any) -> Any:
        """Hidden state at the last token of the new step (return + state tokens)."""
        import torch
        from transformers import DynamicCache

        if len(self.steps) + 1 > self.window:
            self.steps = self.steps[len(self.steps) - (self.refill - 1):]
            self.cache, self.refills = None, self.refills + 1
        if self.use_cache and self.cache is not None:
            new = torch.cat([self.steps[-1][-1:], tokens]) if self.steps else tokens
        else:
            new = torch.cat([*self.steps, tokens])
            self.cache = DynamicCache() if self.use_cache else None
        hidden, cache = self.model.decode(new, self.cache)
        self.cache = cache if self.use_cache else None
        self.pending = tokens
        return hidden

    def commit(self, action_token: Any) -> None:
        """The decided action completes the pending step."""
        import torch

        self.steps.append(torch.cat([self.pending, action_token]))
        self.pending = None


class AqmLlmPolicy(Policy):
    """A LoRA-fine-tuned pretrained LLM: per-class enqueue/drop/mark probabilities every tupdate."""

    name: ClassVar[str] = "aqm-llm"
    Params: ClassVar[type[Params]] = AqmLlmParams
    datapaths: ClassVar[tuple[str, ...]] = ("nfqueue", "ebpf")

    def __init__(self, params: Params | None = None, model: Any = None, stats: Any = None) -> None:
        """From params.checkpoint, or from a model and stats in memory (tests, distillation)."""
        super().__init__(params)
        import torch

        from policies.aqm_llm.checkpoint import load_checkpoint
        from policies.aqm_llm.model import PRECISIONS

        p: AqmLlmParams = self.params  # type: ignore[assignment]
        if p.precision not in PRECISIONS:
            raise base.ParamError(f"parameter 'precision': expected one of {', '.join(PRECISIONS)}")
        torch.set_num_threads(max(1, p.threads))
        if model is None:
            if not p.checkpoint:
                raise base.ParamError("parameter 'checkpoint': aqm-llm needs checkpoint=DIR "
                                      "(a `testbed train --out` directory)")
            model, stats, _ = load_checkpoint(p.checkpoint, backbone=p.backbone or None)
        self.model, self.stats = model.eval(), stats
        self.model.set_exit(p.early_exit_layers or self.model.depth)
        self.model.for_inference(p.precision)
        if not 1 <= p.refill <= self.model.cfg.window:
            raise base.ParamError(f"parameter 'refill': expected 1..{self.model.cfg.window}, got {p.refill}")
        target = stats.rtg_target if math.isnan(p.target_return) else p.target_return
        self.rtg = float(stats.norm_rtg(target))
        self.last_latency_s = 0.0
        self.reset()

    def reset(self) -> None:
        self.context = Context(self.model, self.model.cfg.window, self.params.refill, self.params.kv_cache)

    def queue_config(self) -> QueueConfig:
        return QueueConfig(dualq=True)

    def probabilities(self, state: QueueState) -> Any:
        """[2, 3] float64 tensor: per class (enqueue, drop, mark)."""
        import torch

        from policies.aqm_llm.features import from_state

        feats = self.stats.apply(from_state(state))
        with torch.inference_mode():
            hidden = self.context.decide(self.model.step_tokens(self.rtg, feats))
            probs = torch.softmax(self.model.head(hidden).double(), dim=-1)
            self.context.commit(self.model.action_token(probs.float()))
        return probs

    def update(self, state: QueueState) -> Decision:
        t0 = time.perf_counter()
        probs = self.probabilities(state).tolist()
        decision = to_decision(probs, self.params.l4s_step_ms)
        self.last_latency_s = time.perf_counter() - t0
        return decision


def to_decision(probs: list[list[float]], l4s_step_ms: float) -> Decision:
    """Per-class (enqueue, drop, mark) probabilities -> Decision (L4S step threshold added)."""
    out = {}
    for cls, (_, drop, mark) in zip(CLASSES, probs, strict=True):
        drop, mark = min(max(drop, 0.0), 1.0), min(max(mark, 0.0), 1.0)
        mark = min(mark, 1.0 - drop)
        step = l4s_step_ms if cls == "l4s" and l4s_step_ms > 0 else None
        out[cls] = ClassDecision(p_drop=drop, p_mark=mark, step_threshold_ms=step)
    return Decision(**out)
