"""Peak memory and time per training step: LoRA against full fine-tuning of the same backbone.

    .venv/bin/python bench/llm_memory.py [--backbone smollm2] [--batch 8] [--window 8] [--steps 4]

Each configuration runs in a fresh process, so peaks do not mix. Memory is the process's
resident set (RSS): "loaded" is the RSS once the model and the pool are in memory, "peak" is
getrusage's ru_maxrss after the training steps (weights + gradients + AdamW state +
activations; on a CPU that is what a GPU's memory holds). Time per step is the median over the
steps after the first (the first allocates); "cpu s/step" is the process's CPU time per step,
which other work on a shared machine does not inflate as long as torch runs one thread (the
default here: idle OpenMP workers spin, so with two threads on a busy machine CPU time
overstates the work). The step is train.py's (AqmLlm forward over windows of (return,
7 state tokens, action), soft cross-entropy, backward, clip, AdamW). Activations grow with
batch x window; weights, gradients and optimizer state do not, so the saving is larger at
small batches (try --batch 1). The paper reports about 64% less GPU memory with LoRA than
with full fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(mode: str, args: argparse.Namespace) -> dict:
    """Train `args.steps` steps in this process and measure."""
    import torch
    from accelerate import Accelerator

    from policies.aqm_llm import dataset as D
    from policies.aqm_llm.model import AqmLlm, ModelConfig
    from policies.aqm_llm.train import _Run

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_eps, val_eps, stats = D.prepare(D.synthetic_pool(seconds=2.0), gamma=0.98)
    cfg = ModelConfig(backbone=args.backbone, window=args.window, lora_rank=args.lora_rank,
                      lora_targets=tuple(args.lora_targets.split(",")), full_finetune=mode == "full")
    model = AqmLlm(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    accel = Accelerator()
    model, opt = accel.prepare(model, opt)
    run = _Run(accel, model, opt, stats, cfg, train_eps, val_eps, 1)
    with torch.no_grad():  # weights may be mmapped from safetensors: page them all in first
        sum(float(p.sum()) for p in model.parameters())
    loaded = rss_mb()
    times, cpu = [], []
    for step in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        run.train_step(0, step, args.batch)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    counts = accel.unwrap_model(model).counts()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "loaded_mb": loaded, "peak_mb": peak,
            "step_s": statistics.median(times[1:] or times), "cpu_s": statistics.median(cpu[1:] or cpu),
            "trainable": counts["trainable"], "total": counts["total"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-targets", default="q_proj,v_proj")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", choices=("lora", "full"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    tokens = args.window * 9
    print(f"backbone {args.backbone}, batch {args.batch} x {tokens} tokens, {args.steps} steps, "
          f"torch threads {args.threads}, LoRA r={args.lora_rank} on {args.lora_targets}; memory: RSS")
    rows = {}
    for mode in ("lora", "full"):
        argv = [sys.executable, __file__, "--one", mode, *sys.argv[1:]]
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'mode':>5} {'trainable':>12} {'total':>12} {'loaded MB':>10} {'peak MB':>9} {'s/step':>7} "
          f"{'cpu s/step':>10}")
    for r in rows.values():
        print(f"{r['mode']:>5} {r['trainable']:>12,} {r['total']:>12,} {r['loaded_mb']:10.0f} "
              f"{r['peak_mb']:9.0f} {r['step_s']:7.2f} {r['cpu_s']:10.2f}")
    lora, full = rows["lora"], rows["full"]
    print(f"LoRA saves {1 - lora['peak_mb'] / full['peak_mb']:.0%} of full fine-tuning's peak memory "
          f"(training growth above the loaded model: {lora['peak_mb'] - lora['loaded_mb']:.0f} MB vs "
          f"{full['peak_mb'] - full['loaded_mb']:.0f} MB); time per step {lora['step_s']:.2f} s vs "
          f"{full['step_s']:.2f} s")


if __name__ == "__main__":
    main()
