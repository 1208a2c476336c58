"""`testbed collect` and `testbed evaluate` through the CLI on a real testbed: held-out
scenarios never reach the pool, evaluation runs only on them, the split is a function of the
seed, and an interrupted collection resumes without re-running what it had."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import dumbbell_yaml, needs_root, run_cli, unique_name

MATRIX = """\
duration: 2s
seed: {seed}
datapath: nfqueue
behaviours: [dualpi2, pie]
exploration: {{epsilon: 0.2, spread: 4.0, hold: 4}}
rate: [10mbit, 20mbit]
rtt: [10ms, 20ms]
buffer: [1.5bdp]
mixes:
  - {{name: a, l4s: 1, classic: 1}}
  - {{name: b, classic: 1}}
sample: {sample}
held_out: {held}
"""


def _plan(tmp_path, seed: int, sample: int = 8, held: int = 3) -> dict:
    """The split as `collect` records it, from a plan-only start (no testbed needed)."""
    from orchestrator.experiment import collect as col

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"m{seed}-{sample}-{held}.yaml"
    path.write_text(MATRIX.format(seed=seed, sample=sample, held=held))
    out = tmp_path / f"plan{seed}-{sample}-{held}"
    return col.start(path, out)


def test_split_is_a_function_of_the_seed(tmp_path):
    a, b = _plan(tmp_path / "a", 7), _plan(tmp_path / "b", 7)
    assert [p["name"] for p in a["points"]] == [p["name"] for p in b["points"]]
    assert [p["held_out"] for p in a["points"]] == [p["held_out"] for p in b["points"]]
    held = {p["name"] for p in a["points"] if p["held_out"]}
    train = {p["name"] for p in a["points"] if not p["held_out"]}
    assert len(held) == 3 and len(train) == 5 and not held & train
    others = [_plan(tmp_path / f"s{s}", s) for s in range(8, 14)]
    assert any({p["name"] for p in o["points"] if p["held_out"]} != held for o in others)


@pytest.mark.integration
@pytest.mark.slow
@needs_root
def test_collect_keeps_held_out_scenarios_out_of_the_pool(netns_testbed, tmp_path):
    tb = netns_testbed(dumbbell_yaml(unique_name("co"), rate="20mbit", rtt="20ms"))
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX.format(seed=3, sample=3, held=1))
    out = tmp_path / "pool"
    res = run_cli("collect", "--matrix", str(matrix), "--out", str(out), "--testbed", tb.name, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    state = json.loads((out / "collect.json").read_text())
    held = {p["name"] for p in state["points"] if p["held_out"]}
    train = {p["name"] for p in state["points"] if not p["held_out"]}
    assert len(held) == 1 and len(train) == 2
    assert all(p["run"] is None for p in state["points"] if p["held_out"])
    pool = pd.read_parquet(out / "pool.parquet")
    assert set(pool["scenario"]) == train, "the pool must hold exactly the training scenarios"
    assert pool["episode"].nunique() == 2 and len(pool) > 50
    # the link is restored after the collection (the scenarios ran at 10 and 20 Mbit/s, 10/20 ms)
    from orchestrator import providers as tbmod

    bn = tbmod.load(tb.name).bottleneck
    assert (bn.rate_bps, round(bn.rtt_s, 6)) == (20e6, 0.02)
    # a second collect resumes: nothing to run, same pool
    again = run_cli("collect", "--matrix", str(matrix), "--out", str(out), "--testbed", tb.name, timeout=120)
    assert again.returncode == 0 and "0 scenarios to run" in again.stdout, again.stdout + again.stderr
    # evaluation runs only on the held-out scenario
    ev = run_cli("evaluate", "--out", str(out), "--policy", "fifo", "--repeat", "1", "--testbed", tb.name,
                 timeout=300)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    state = json.loads((out / "collect.json").read_text())
    assert {e["scenario"] for e in state["evaluations"]} == held
