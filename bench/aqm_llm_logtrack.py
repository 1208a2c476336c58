"""Does a trained AQM-LLM's classic probability track DualPI2's within a factor of 2 (issue 14,
item 1's acceptance example)? Not a test; prints one table per checkpoint.

    .venv/bin/python bench/aqm_llm_logtrack.py --checkpoint models/aqm-llm \
        --checkpoint build/aqm-llm-coupled [--pool models/aqm-llm/pool.parquet]
        [--episodes-of models/aqm-llm] [--precision float32] [--exit 0]

Episodes: the validation episodes of --episodes-of's config.json (default: the shipped model's
four DualPI2 episodes, which models/aqm-llm-coupled/train.yaml leaves out of training), so
neither model trained on them. Each model runs as deployed (its own context, in episode order,
its checkpoint's deploy settings unless --precision/--exit say otherwise) over the states
DualPI2 saw; the label is what DualPI2 decided at that state (pool columns).

Per class: over rows where DualPI2's probability is positive (p' > 1e-8), the median of
|log10(p_model / p_label)| (model floored at 1e-12), the share within a factor of 2
(|log10| < 0.301), the median label and model probability; "clean" restricts to rows whose
label is DualPI2's own coupling (p_L = 2 sqrt(p_C) within 1%: the pool's exploration scaled
the classes independently, so other rows are exploration noise); and at rows where the
label is 0, the share where the model signals with p >= 1e-4.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policies.aqm_llm import dataset as D  # noqa: E402
from policies.aqm_llm.policy import AqmLlmParams, AqmLlmPolicy  # noqa: E402

FACTOR2 = math.log10(2)


def run(policy: AqmLlmPolicy, rows: pd.DataFrame) -> np.ndarray:
    """[n, 2] signal probability (drop + mark) per class (l4s, classic) at each state."""
    policy.reset()
    out = []
    for s in D.states(rows):
        d = policy.update(s)
        out.append([d.l4s.p_drop + d.l4s.p_mark, d.classic.p_drop + d.classic.p_mark])
    return np.array(out)


def report(name: str, model: np.ndarray, rows: pd.DataFrame) -> dict[str, float]:
    lab_l = (rows["l4s_p_drop"] + rows["l4s_p_mark"]).to_numpy(np.float64)
    lab_c = (rows["classic_p_drop"] + rows["classic_p_mark"]).to_numpy(np.float64)
    positive = np.sqrt(lab_c) > 1e-8
    clean = positive & (np.abs(lab_l - 2 * np.sqrt(lab_c)) <= 0.01 * lab_l) & (lab_l < 1)
    out: dict[str, float] = {"rows": len(rows), "positive": int(positive.sum()), "clean": int(clean.sum())}
    for i, (cls, lab) in enumerate((("l4s", lab_l), ("classic", lab_c))):
        for tag, sel in (("", positive & (lab > 0)), ("clean_", clean)):
            err = np.abs(np.log10(np.maximum(model[sel, i], 1e-12) / lab[sel]))
            out[f"{tag}{cls}_median_log10_err"] = float(np.median(err)) if sel.any() else math.nan
            out[f"{tag}{cls}_within_2x"] = float((err < FACTOR2).mean()) if sel.any() else math.nan
        out[f"{cls}_median_label"] = float(np.median(lab[positive]))
        out[f"{cls}_median_model"] = float(np.median(model[positive, i]))
        out[f"{cls}_spurious_at_zero"] = float((model[~positive, i] >= 1e-4).mean()) if (~positive).any() \
            else math.nan
    print(json.dumps({"checkpoint": name, **out}, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", action="append", required=True)
    ap.add_argument("--pool", default="models/aqm-llm/pool.parquet")
    ap.add_argument("--episodes-of", default="models/aqm-llm")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--exit", type=int, default=0, help="early exit layers (0: the checkpoint's)")
    ap.add_argument("--save", help="also write each model's probabilities here (.npz)")
    args = ap.parse_args()
    config = json.loads((Path(args.episodes_of) / "config.json").read_text())
    names = [n for n in config["pool_episodes"]["val"] if D.behaviour(n) == "dualpi2"]
    pool = pd.read_parquet(args.pool)
    eps = dict(D.episodes(pool[pool["episode"].isin(names)]))
    rows = pd.concat([eps[n] for n in names], ignore_index=True)
    print(f"episodes: {names} ({len(rows)} DualPI2 states)")
    saved = {}
    for ckpt in args.checkpoint:
        policy = AqmLlmPolicy(AqmLlmParams(checkpoint=ckpt, worker=False, precision=args.precision,
                                           early_exit_layers=args.exit, threads=2))
        model = np.concatenate([run(policy, eps[n]) for n in names])
        report(ckpt, model, rows)
        saved[ckpt] = model
    if args.save:
        np.savez(args.save, **saved)


if __name__ == "__main__":
    main()
