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
quantises the backbone's Linear layers (bfloat16 casts it); see bench/llm_latency.py. A
checkpoint may say how it runs by default (config.json "deploy", set by the train config):
the shipped model exits at 4 layers in int8.

Never late (issue 15). Live, the model runs in a process of its own (worker=true, policy
worker.py, at a real-time priority): in-process, the forward pass's Python code competed with
the link's event loop for the GIL. By default the loop is *pipelined*: at each tick the
control loop applies the answer the worker computed from the previous tick's state, if it is
there, and hands it this tick's state (a flat float vector, no pickle), so the control loop
never waits; a decision takes effect one tupdate after its state. An answer not there at its
tick is late: the decision in force stays, the miss is counted (`late`, read by the control
loop), the answer is dropped when it comes, and the next request tells the worker which
action was *applied*, so the model's context holds the decision in force, never one it
proposed too late (issue 14, item 6). pipelined=false waits for this tick's answer at most
until deadline_ms instead (fresher, but the control thread waits and misses more on a busy
machine). A request is only sent once the worker is idle, so a slow worker never builds a
backlog.

Return conditioning: every step asks for the same return, `target_return` (default: the
training pool's 90th percentile of returns-to-go, stored with the model).

The L4S class keeps a native step threshold (l4s_step_ms, like DualPI2's 1 ms) unless set
to 0: the model's probabilities come on top, as DualPI2's coupled probability does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from policies import base
from policies.base import CLASSES, ClassDecision, Decision, Params, Policy, QueueConfig, QueueState

# the shipped model (models/aqm-llm-anchored/MODEL_CARD.md): what `--policy aqm-llm` runs by
# default; models/aqm-llm-coupled (coupled head) and models/aqm-llm (the first one, softmax
# head) are kept for comparison
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "aqm-llm-anchored"
DEPLOY_KEYS = ("early_exit_layers", "precision", "kv_cache", "refill", "threads", "l4s_step_ms",
               "target_return")
NO_SIGNAL = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]  # Decision(): enqueue everything, per class
ANCHOR_SLOT = 1  # the raw vector's second scalar: the anchor's log10 p' in the anchored set


def _param(default: Any, help_: str) -> Any:
    return field(default=default, metadata={"help": help_})


@dataclass
class AqmLlmParams(Params):
    checkpoint: str = _param("", "checkpoint directory (testbed train --out); empty: the shipped "
                                 "models/aqm-llm-anchored")
    early_exit_layers: int = _param(0, "run only N decoder layers (a trained exit); 0: the "
                                       "checkpoint's deploy setting, else all")
    kv_cache: bool = _param(True, "keep keys/values across updates")
    refill: int = _param(1, "steps kept when the context window is full (1: restart from this step)")
    precision: str = _param("auto", "float32, bfloat16 or int8 (LoRA merged first); auto: the "
                                    "checkpoint's deploy setting, else float32")
    deadline_ms: float = _param(16.0, "decision deadline: a later answer is dropped and counted")
    threads: int = _param(1, "torch CPU threads")
    worker: bool = _param(True, "decide in a process of its own while a control loop runs it")
    pipelined: bool = _param(True, "with the worker: apply at each tick the decision computed from the "
                                   "previous tick's state (never waits); false: wait for this tick's, "
                                   "at most until the deadline")
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

        if self.pending is not None:
            raise RuntimeError("commit the pending step's action before deciding the next step")
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
        """The action in force after the pending step (applied, not merely proposed) completes
        it. Its token reaches the backbone with the next step's tokens, so committing late
        costs nothing."""
        import torch

        self.steps.append(torch.cat([self.pending, action_token]))
        self.pending = None


class AqmLlmPolicy(Policy):
    """A LoRA-fine-tuned pretrained LLM: per-class enqueue/drop/mark probabilities every tupdate."""

    name: ClassVar[str] = "aqm-llm"
    Params: ClassVar[type[Params]] = AqmLlmParams
    datapaths: ClassVar[tuple[str, ...]] = ("nfqueue", "ebpf")

    def __init__(self, params: Params | None = None, model: Any = None, stats: Any = None) -> None:
        """From params.checkpoint (default: the shipped model), or from a model and stats in
        memory (tests, distillation; these never use a worker process)."""
        super().__init__(params)
        import torch

        from policies.aqm_llm.checkpoint import load_checkpoint
        from policies.aqm_llm.features import state_vector
        from policies.aqm_llm.model import PRECISIONS

        p: AqmLlmParams = self.params  # type: ignore[assignment]
        if p.precision not in (*PRECISIONS, "auto"):
            raise base.ParamError(f"parameter 'precision': expected auto or one of {', '.join(PRECISIONS)}")
        if p.deadline_ms <= 0:
            raise base.ParamError(f"parameter 'deadline_ms': expected a positive number, "
                                  f"got {p.deadline_ms:g}")
        deploy: dict[str, Any] = {}
        self.in_memory = model is not None
        if model is None:
            model, stats, config = load_checkpoint(p.checkpoint or DEFAULT_CHECKPOINT,
                                                   backbone=p.backbone or None)
            deploy = _deploy(config, p.checkpoint or str(DEFAULT_CHECKPOINT))
        self.settings = resolved(p, deploy)  # what runs: params over the checkpoint's deploy
        torch.set_num_threads(max(1, self.settings["threads"]))
        self.model, self.stats = model.eval(), stats
        self._state_vector = state_vector  # bound once: update() runs every tupdate
        self.model.set_exit(self.settings["early_exit_layers"] or self.model.depth)
        self.model.for_inference(self.settings["precision"])
        if not 1 <= self.settings["refill"] <= self.model.cfg.window:
            raise base.ParamError(f"parameter 'refill': expected 1..{self.model.cfg.window}, "
                                  f"got {self.settings['refill']}")
        target = self.settings["target_return"]
        target = stats.rtg_target if math.isnan(target) else target
        self.rtg = float(stats.norm_rtg(target))
        self.last_latency_s = 0.0
        self.worker: Any = None
        self.in_loop = False  # a control loop runs us and enforces the deadline (start())
        self.prioritised = False
        self.late = False  # the last update missed its deadline (the control loop counts it)
        self.late_updates = 0
        self.reset()

    def reset(self) -> None:
        from policies.aqm_llm.anchor import LOG10_FLOOR, Anchor
        from policies.aqm_llm.features import ANCHOR_NAME

        self.context = Context(self.model, self.model.cfg.window, self.settings["refill"],
                               self.settings["kv_cache"])
        self.applied = NO_SIGNAL  # probabilities in force (what the context commits)
        self.last_base = (math.nan, math.nan)  # p', k of the last proposal (log-space heads)
        self.sent_anchor = LOG10_FLOOR  # the anchor of the state the worker computes on
        self.anchor = Anchor() if self.stats.names[1] == ANCHOR_NAME else None
        self.current = Decision()
        self.stale = False  # pipelined: the outstanding answer came too late and will be dropped

    def queue_config(self) -> QueueConfig:
        return dualpi2_queues()

    # ---- lifecycle: the control loop starts and closes its policy
    def start(self) -> None:
        """Move decisions to a worker process (unless worker=false or the model came from
        memory). Called by the process that runs the control loop, not by the one that only
        checks the run, so only one worker exists; returns when the worker is ready."""
        self.in_loop = True
        if self.worker is not None or self.in_memory or not self.params.worker:
            return
        from policies.aqm_llm.worker import Worker

        self.worker = Worker(self.params, self.settings, in_process_policy)
        self.model = None  # the worker has its own copy; this one would only hold memory
        self.context = None

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    # ---- deciding
    def propose(self, vector: Any) -> Any:
        """[2, 3] float64 probabilities for a raw state vector (features.state_vector): the
        pending step is first completed with the action that was applied after it."""
        import torch

        from policies.aqm_llm.features import split_vector

        if self.context.pending is not None:
            self.context.commit(self.model.action_token(torch.tensor(self.applied, dtype=torch.float32)))
        feats = self.stats.apply(split_vector(vector))
        with torch.inference_mode():
            hidden = self.context.decide(self.model.step_tokens(self.rtg, feats))
            anchor = torch.tensor(float(vector[ANCHOR_SLOT]))  # raw: the anchored head's input
            out = self.model.head_out(hidden, anchor).double()
            self.last_base = self.model.base(out)
            return self.model.probs(out)

    def vector(self, state: QueueState) -> Any:
        """The raw state vector in this model's feature set (features.state_vector); for an
        anchored model this is the anchor's update for the state, so once per state."""
        anchor_log = self.anchor.update(state) if self.anchor is not None else 0.0
        return self._state_vector(state, self.stats.names, anchor_log)

    def probabilities(self, state: QueueState) -> Any:
        """[2, 3] float64 tensor: per class (enqueue, drop, mark), taken as applied (offline:
        distillation, tests)."""
        probs = self.propose(self.vector(state))
        self.applied = probs.tolist()
        return probs

    def update(self, state: QueueState) -> Decision:
        t0 = time.perf_counter()
        if self.worker is not None and not self.prioritised:
            from policies.aqm_llm.worker import prioritise_control_thread

            self.prioritised = prioritise_control_thread() or True  # try once
        vector = self.vector(state)  # every tick, whatever is decided: the anchor integrates
        if self.worker is not None and self.params.pipelined:
            probs, self.late = self._pipelined(vector, t0)
        else:
            if self.worker is not None:
                probs = self.worker.decide(vector, self.applied, t0 + self.settings["deadline_ms"] / 1e3)
            else:
                probs = self.propose(vector).tolist()
                if self.in_loop and time.perf_counter() - t0 > self.settings["deadline_ms"] / 1e3:
                    probs = None  # the control loop drops it too: the context keeps what is in force
            self.late = probs is None
        self.last_latency_s = time.perf_counter() - t0
        self.late_updates += self.late
        if probs is None:
            return self.current
        self.applied = probs
        self.current = to_decision(probs, self.settings["l4s_step_ms"])
        return self.current

    def _pipelined(self, vector: Any, t0: float) -> tuple[list[list[float]] | None, bool]:
        """(probabilities to apply now or None, late?). Applies the answer to the previous
        tick's state, and hands the worker this tick's state. The answer had a whole tick; if
        it is not there yet, it gets at most a grace of half the deadline (the control loop
        then still has half a tick for itself), else it is late: dropped when it comes, and
        the decision in force is what the model's context commits for that step."""
        fresh, first = None, False
        if self.stale:  # the answer of an earlier tick came too late: drop it, then start afresh
            if not self.worker.drop_late():
                return None, True  # still computing: this tick's state waits for the next tick
            self.stale = False
        elif self.worker.busy:
            fresh = self.worker.collect(t0 + self.settings["deadline_ms"] / 2e3)
            if fresh is None:
                self.stale = True
                return None, True
        else:
            first = True  # nothing computed yet, so nothing is late
        if fresh is not None and self.anchor is not None:  # the correction, on this tick's anchor
            fresh = reanchor(self.worker.last_base, self.sent_anchor, float(vector[ANCHOR_SLOT]))
        # what was applied after the previous step: its answer, or the decision kept in force
        applied = fresh if fresh is not None else self.applied
        self.worker.submit(vector, applied)
        self.sent_anchor = float(vector[ANCHOR_SLOT])
        return fresh, fresh is None and not first

    def latency_stats(self) -> dict[str, float]:
        """The worker's own compute times (the part of a decision spent in the model)."""
        return self.worker.stats() if self.worker is not None else {}


def resolved(p: AqmLlmParams, deploy: dict[str, Any]) -> dict[str, Any]:
    """Deployment settings: a parameter given explicitly wins over the checkpoint's deploy."""
    defaults = AqmLlmParams()
    out = {}
    for key in DEPLOY_KEYS:
        value = getattr(p, key)
        unset = value == getattr(defaults, key) or (isinstance(value, float) and math.isnan(value))
        out[key] = deploy[key] if unset and key in deploy else value
    out["deadline_ms"] = p.deadline_ms  # never a deploy key (_deploy refuses others)
    if out["precision"] == "auto":
        out["precision"] = "float32"
    return out


def _deploy(config: dict[str, Any], where: str) -> dict[str, Any]:
    deploy = config.get("deploy") or {}
    if not isinstance(deploy, dict):
        raise base.ParamError(f"checkpoint {where}: config.json key 'deploy': expected a mapping")
    unknown = sorted(set(deploy) - set(DEPLOY_KEYS))
    if unknown:
        raise base.ParamError(f"checkpoint {where}: config.json key 'deploy.{unknown[0]}': unknown "
                              f"(expected {', '.join(DEPLOY_KEYS)})")
    return deploy


def reanchor(base: tuple[float, float], sent: float, now: float) -> list[list[float]]:
    """An anchored model's answer to the previous tick's state, applied to this tick's anchor:
    p' = 10^(now + c), c = log10 p'_answer - sent (the correction it chose), and its k. So
    pipelining delays the model's correction by a tick but never DualPI2's own p': with c = 0
    this is DualPI2 now. A correction unknown (the answer's anchor or p' was 0) counts as 0;
    an anchor now at 0 signals nothing, as the anchored head does."""
    from policies.aqm_llm.anchor import LOG10_FLOOR
    from policies.aqm_llm.anchored import coupled_probs

    p_base, k = base
    c = math.log10(p_base) - sent if p_base > 0 and sent > LOG10_FLOOR else 0.0
    p_now = 10.0 ** (now + c) if now > LOG10_FLOOR else 0.0
    return coupled_probs(min(p_now, 1.0), k if math.isfinite(k) else 2.0)


def dualpi2_queues() -> QueueConfig:
    """The queues AQM-LLM and its student run in: DualPI2's own (its limit, C share and tick).
    The pool's DualPI2 episodes ran in them, and the comparison with DualPI2 is then one of
    decisions only; with the testbed's buffer as the limit instead, an overshoot that DualPI2
    absorbs tail-dropped Reno flows into timeouts."""
    from policies.dualpi2 import DualPi2

    return DualPi2().queue_config()


def to_decision(probs: list[list[float]], l4s_step_ms: float) -> Decision:
    """Per-class (enqueue, drop, mark) probabilities -> Decision (L4S step threshold added).
    The coin is tossed at dequeue, as sch_dualpi2 (drop_dequeue, its default) and DualPI2 here
    do, and as the pool's DualPI2 episodes ran."""
    out = {}
    for cls, (_, drop, mark) in zip(CLASSES, probs, strict=True):
        drop, mark = min(max(drop, 0.0), 1.0), min(max(mark, 0.0), 1.0)
        mark = min(mark, 1.0 - drop)
        step = l4s_step_ms if cls == "l4s" and l4s_step_ms > 0 else None
        out[cls] = ClassDecision(p_drop=drop, p_mark=mark, step_threshold_ms=step, coin_at_dequeue=True)
    return Decision(**out)


def in_process_policy(args: dict[str, Any]) -> AqmLlmPolicy:
    """The worker process's own policy (worker.py): these parameters, deciding in-process."""
    return AqmLlmPolicy(replace(AqmLlmParams(), **args))
