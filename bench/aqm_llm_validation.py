"""How closely a trained AQM-LLM (and its student) follow the behaviour policies' probabilities
on the validation episodes of its pool, in log space: the error that matters for control is a
factor, not a difference (issue 14, item 7). Not a test; prints one table.

    .venv/bin/python bench/aqm_llm_validation.py [--checkpoint models/aqm-llm-coupled]
        [--student models/aqm-llm-coupled-student] [--pool models/aqm-llm-coupled/pool.parquet]

Per class and signal (L4S mark, classic mark, classic drop): the median and 90th percentile of
|log10(model / label)| over the decisions where the label is at least 1e-4, the median label
and the median model probability there, and the share of decisions where the model signals
(>= 1e-4) while the label is 0. The model runs as deployed (its checkpoint's deploy settings,
its own context, in episode order); the student sees the same states.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from policies.aqm_llm import dataset as D
from policies.aqm_llm.policy import AqmLlmParams, AqmLlmPolicy
from policies.aqm_llm.student import StudentParams, StudentPolicy

FLOOR = 1e-4
SIGNALS = (("l4s mark", 0, 2, "l4s_p_mark"), ("classic mark", 1, 2, "classic_p_mark"),
           ("classic drop", 1, 1, "classic_p_drop"))


def run(policy, rows: pd.DataFrame) -> np.ndarray:
    out = []
    for s in D.states(rows):
        d = policy.update(s)
        out.append([[1 - d.l4s.p_drop - d.l4s.p_mark, d.l4s.p_drop, d.l4s.p_mark],
                    [1 - d.classic.p_drop - d.classic.p_mark, d.classic.p_drop, d.classic.p_mark]])
    return np.array(out)


def table(name: str, probs: np.ndarray, labels: pd.DataFrame) -> None:
    for signal, cls, action, column in SIGNALS:
        model, label = probs[:, cls, action], labels[column].to_numpy(np.float64)
        on = label >= FLOOR
        err = np.abs(np.log10(np.maximum(model[on], 1e-9) / label[on])) if on.any() else np.array([np.nan])
        spurious = float(((model >= FLOOR) & (label == 0)).sum() / max((label == 0).sum(), 1))
        print(f"{name:>8} {signal:>13} {on.sum():>6} {np.median(err):>10.2f} {np.percentile(err, 90):>8.2f} "
              f"{np.median(label[on]) if on.any() else np.nan:>12.2e} "
              f"{np.median(model[on]) if on.any() else np.nan:>12.2e} {spurious:>14.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="models/aqm-llm-coupled")
    ap.add_argument("--student", default="models/aqm-llm-coupled-student")
    ap.add_argument("--pool", default="models/aqm-llm-coupled/pool.parquet")
    args = ap.parse_args()
    config = json.loads(open(f"{args.checkpoint}/config.json").read())
    val = set(config["pool_episodes"]["val"])
    pool = pd.read_parquet(args.pool)
    teacher = AqmLlmPolicy(AqmLlmParams(checkpoint=args.checkpoint, worker=False))
    student = StudentPolicy(StudentParams(checkpoint=args.student))
    probs = {"aqm-llm": [], "student": []}
    labels = []
    for name, rows in D.episodes(pool):
        if name not in val:
            continue
        teacher.reset()
        probs["aqm-llm"].append(run(teacher, rows))
        probs["student"].append(run(student, rows))
        labels.append(rows)
    frame = pd.concat(labels)
    print(f"validation episodes: {len(labels)} ({len(frame)} decisions), settings {teacher.settings}")
    print(f"{'model':>8} {'signal':>13} {'n':>6} {'|log10| p50':>10} {'p90':>8} {'label p50':>12} "
          f"{'model p50':>12} {'signal at 0':>14}")
    for name, parts in probs.items():
        table(name, np.concatenate(parts), frame)


if __name__ == "__main__":
    main()
