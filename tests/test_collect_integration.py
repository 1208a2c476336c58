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
    # two settings of one policy are two rows, each run (they once shared a key, and the second
    # was skipped as done)
    ev = run_cli("evaluate", "--out", str(out), "--policy", "fifo", "--policy", "fifo:limit=40",
                 "--repeat", "1", "--testbed", tb.name, timeout=300)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    state = json.loads((out / "collect.json").read_text())
    assert {e["scenario"] for e in state["evaluations"]} == held
    assert sorted(e["policy"] for e in state["evaluations"]) == ["fifo", "fifo:limit=40"]
    table = pd.read_csv(out / "evaluation.csv", header=[0, 1], index_col=[0, 1])
    assert set(table.index) == {("static", "fifo"), ("static", "fifo:limit=40")}
    per_scenario = pd.read_csv(out / "evaluation-scenarios.csv", header=[0, 1], index_col=[0, 1])
    assert set(per_scenario.index) == {(s, p) for s in held for p in ("fifo", "fifo:limit=40")}


def test_shards_partition_the_training_points(tmp_path):
    """Every machine plans the same points; shard I of N takes those with index % N == I:
    together the shards cover each training point exactly once."""
    from orchestrator.experiment import collect as col

    state = _plan(tmp_path, seed=5, sample=8, held=3)
    train = [i for i, p in enumerate(state["points"]) if not p["held_out"]]
    for n in (1, 2, 3, 5):
        owners = [[s for s in range(n) if col.in_shard(i, (s, n))] for i in train]
        assert all(len(o) == 1 for o in owners), (n, owners)
    assert col.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0", "1/2/3"):
        with pytest.raises(ValueError):
            col.parse_shard(bad)


@needs_root
@pytest.mark.slow  # two shards of real runs
def test_two_shards_then_one_merged_pool(netns_testbed, tmp_path):
    """`collect --shard 0/2` and `--shard 1/2` (as two machines would, here one after the
    other), then `pool build` of the two pools: the training scenarios, each once."""
    tb = netns_testbed(dumbbell_yaml(unique_name("sh"), rate="20mbit", rtt="20ms"))
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX.format(seed=3, sample=3, held=1))
    pools = []
    for shard in ("0/2", "1/2"):
        out = tmp_path / f"shard{shard[0]}"
        res = run_cli("collect", "--matrix", str(matrix), "--out", str(out), "--testbed", tb.name,
                      "--shard", shard, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "1 scenarios to run in shard" in res.stdout, res.stdout
        pools.append(out / "pool.parquet")
    state = json.loads((tmp_path / "shard0" / "collect.json").read_text())
    train = {p["name"] for p in state["points"] if not p["held_out"]}
    merged = tmp_path / "merged.parquet"
    res = run_cli("pool", "build", *map(str, pools), "--out", str(merged))
    assert res.returncode == 0, res.stderr
    pool = pd.read_parquet(merged)
    assert set(pool["scenario"]) == train and pool["episode"].nunique() == 2
    # a shard's pool given twice is refused, naming both places
    twice = run_cli("pool", "build", str(pools[0]), str(pools[0]), "--out", str(tmp_path / "x.parquet"))
    assert twice.returncode == 2 and "in both" in twice.stderr and "Traceback" not in twice.stderr
    # resuming a folder as another shard is refused
    other = run_cli("collect", "--matrix", str(matrix), "--out", str(tmp_path / "shard0"), "--testbed",
                    tb.name, "--shard", "1/2")
    assert other.returncode == 2 and "shard 0/2" in other.stderr, other.stderr


@needs_root
@pytest.mark.slow  # ansible-playbook, a testbed and two short runs
def test_the_collect_playbook_runs_a_shard_and_merges(tmp_path):
    """playbooks/collect.yml on a one-host inventory (this machine, local connection): the
    shard's testbed is built, collected, fetched, removed, and the pools merged."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    name = unique_name("pb")
    (tmp_path / "m.yaml").write_text(MATRIX.format(seed=3, sample=3, held=1))
    (tmp_path / "inv.ini").write_text(f"[collectors]\nlab1 ansible_connection=local "
                                      f"ansible_python_interpreter={sys.executable}\n")
    bin_dir = Path(sys.executable).parent
    extra = {"project_dir": str(root), "matrix": str(tmp_path / "m.yaml"), "testbed_name": name,
             "shard_out": str(tmp_path / "out"), "shards_dir": str(tmp_path / "shards"),
             "merged_pool": str(tmp_path / "pool.parquet"), "testbed_cli": str(bin_dir / "testbed")}
    res = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(tmp_path / "inv.ini"),
                          str(root / "playbooks" / "collect.yml"), "-e", json.dumps(extra)],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    pool = pd.read_parquet(tmp_path / "pool.parquet")
    state = json.loads((tmp_path / "out" / "collect.json").read_text())
    assert set(pool["scenario"]) == {p["name"] for p in state["points"] if not p["held_out"]}
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"tb-{name}-" not in ns, "the shard's testbed must be removed"
