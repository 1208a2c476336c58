"""Decision latency of AQM-LLM on this CPU: real SmolLM2-135M, KV cache on/off, early exit, and
of the distilled student. Prints p50/p99/max per configuration; not a test.

    .venv/bin/python bench/llm_latency.py [--checkpoint DIR] [--steps 120] [--threads 1] [--window 10]

Without --checkpoint the encoder, head and LoRA weights are untrained: latency does not depend
on their values. The model is built with exits at 4, 8 and 16 layers so one backbone serves
every depth. Rows: float32 with and without the KV cache at each depth, a refill keeping half
the window (the spike it costs), then bfloat16 and int8 (LoRA merged, Linear layers
dynamically quantised) with the cache. Latency is that of AqmLlmPolicy.update (features,
encoder, backbone, head, Decision) over consecutive states of a toy fluid-queue episode,
after a few warm-up updates. "refill ms" is the median of the updates that restarted the
context because the window was full (policy.py: why refill, not slide); they are inside
p50/p99 too.
Goal (issue 6): LLM p99 <= 16 ms (tupdate), student <= 50 us.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from policies.aqm_llm import dataset as D
from policies.aqm_llm.checkpoint import load_checkpoint
from policies.aqm_llm.model import AqmLlm, ModelConfig
from policies.aqm_llm.policy import AqmLlmParams, AqmLlmPolicy
from policies.aqm_llm.student import Student, StudentPolicy, student_inputs

DEADLINE_MS = 16.0


def states(n: int) -> list:
    pool = D.synthetic_pool(behaviours=("dualpi2",), seconds=max(2.0, n * 0.016 + 0.5))
    return list(D.states(next(D.episodes(pool))[1]))[:n]


def measure(policy, sts: list, warmup: int = 5) -> dict:
    """Wall-clock latency per update, and the updating thread's CPU time: on a shared machine
    the wall clock includes time the scheduler gave to other processes, the CPU time does not
    (with one torch thread all the work runs on the calling thread)."""
    wall, cpu, refill = [], [], []
    for i, s in enumerate(sts):
        before = getattr(getattr(policy, "context", None), "refills", 0)
        t0, c0 = time.perf_counter(), time.thread_time()
        policy.update(s)
        ms, cpu_ms = (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3
        if i >= warmup:
            wall.append(ms)
            cpu.append(cpu_ms)
            if getattr(getattr(policy, "context", None), "refills", 0) > before:
                refill.append(ms)
    a, c = np.array(wall), np.array(cpu)
    return {"p50": np.percentile(a, 50), "p99": np.percentile(a, 99), "max": a.max(),
            "cpu50": np.percentile(c, 50), "cpu99": np.percentile(c, 99),
            "miss": float((a > DEADLINE_MS).mean()), "refill": np.median(refill) if refill else float("nan")}


HEADER = f"{'precision':>9} {'layers':>6} {'kv_cache':>8} {'refill':>6} {'p50 ms':>8} {'p99 ms':>8} " \
         f"{'max ms':>8} {'refill ms':>9} {'>16ms':>6} {'cpu p50':>8} {'cpu p99':>8}"


def llm_row(model: AqmLlm, stats, sts: list, threads: int, precision: str, depth: int, kv: bool,
            refill: int) -> None:
    params = AqmLlmParams(early_exit_layers=depth, kv_cache=kv, threads=threads, precision=precision,
                          refill=refill)
    r = measure(AqmLlmPolicy(params, model=model, stats=stats), sts)
    print(f"{precision:>9} {depth:>6} {str(kv):>8} {refill:>6} {r['p50']:8.2f} {r['p99']:8.2f} "
          f"{r['max']:8.2f} {r['refill']:9.2f} {r['miss']:6.1%} {r['cpu50']:8.2f} {r['cpu99']:8.2f}",
          flush=True)


def llm_table(build, stats, sts: list, threads: int, window: int) -> None:
    """float32: every depth with and without the cache, and a refill that keeps half the
    window; then bfloat16 and int8 (each on a fresh model: preparing one changes it)."""
    model = build()
    print(f"\nAQM-LLM, backbone {model.cfg.backbone} ({model.depth} layers, width "
          f"{model.decoder.config.hidden_size}), window {model.cfg.window} steps x 9 tokens, "
          f"torch threads {threads}, {len(sts)} updates per row\n{HEADER}")
    depths = sorted(model.exits, reverse=True)
    for depth in depths:
        for kv in (True, False):
            llm_row(model, stats, sts, threads, "float32", depth, kv, 1)
    for depth in (depths[-1], depths[-2]):
        llm_row(model, stats, sts, threads, "float32", depth, True, window // 2)
    for precision in ("bfloat16", "int8"):
        model = build()
        for depth in depths:
            llm_row(model, stats, sts, threads, precision, depth, True, 1)


def student_row(stats, sts: list, repeat: int) -> None:
    rng = np.random.default_rng(0)
    n_in = student_inputs(stats.apply(D.F.from_state(sts[0]))).shape[1]
    sizes = [n_in, 64, 64, 6]
    weights = {}
    for i in range(3):
        weights[f"w{i}"] = rng.normal(0, 0.1, (sizes[i], sizes[i + 1])).astype(np.float32)
        weights[f"b{i}"] = np.zeros(sizes[i + 1], np.float32)
    policy = StudentPolicy(student=Student(weights, stats))
    r = measure(policy, sts * repeat, warmup=len(sts))
    print(f"\nstudent MLP {sizes} (numpy), {len(sts) * (repeat - 1)} updates: p50 {r['p50'] * 1e3:.1f} us, "
          f"p99 {r['p99'] * 1e3:.1f} us, max {r['max'] * 1e3:.1f} us; thread CPU time p50 "
          f"{r['cpu50'] * 1e3:.1f} us, p99 {r['cpu99'] * 1e3:.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--window", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sts = states(args.steps)
    if args.checkpoint:
        stats = load_checkpoint(args.checkpoint)[1]

        def build() -> AqmLlm:
            return load_checkpoint(args.checkpoint)[0]
    else:
        stats = D.prepare(D.synthetic_pool(seconds=2.0), gamma=0.98)[2]

        def build() -> AqmLlm:
            return AqmLlm(ModelConfig(backbone="smollm2", window=args.window, exits=(4, 8, 16))).eval()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
    llm_table(build, stats, sts, args.threads, args.window)
    student_row(stats, sts, repeat=20)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
