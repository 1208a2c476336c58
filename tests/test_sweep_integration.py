"""Sweeps: the cross product with repetitions, and resuming one that stopped."""

from __future__ import annotations

import json

import pytest

from conftest import dumbbell_yaml, needs_root, run_cli, unique_name

pytestmark = [needs_root, pytest.mark.integration, pytest.mark.slow]

SCENARIO = """scenario:
  duration: 3s
  flows:
    - {name: cubic, kind: tcp, src: s1, dst: rx, cc: cubic}
  sweep: {policy: [fifo, dualpi2], rate: [20mbit]}
"""


def test_sweep_runs_every_point_and_resumes(netns_testbed, tmp_path):
    from orchestrator.experiment import sweep

    name = unique_name("sw")
    tb = netns_testbed(dumbbell_yaml(name, scenario=SCENARIO))
    res = run_cli("run", "--testbed", name, "--results", str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    sweep_dir = next(tmp_path.glob("sweep-*"))
    data = json.loads((sweep_dir / "sweep.json").read_text())
    assert [(p["point"]["policy"], p["status"]) for p in data["points"]] == [
        ("fifo", "complete"), ("dualpi2", "complete")]
    for p in data["points"]:
        summary = json.loads((sweep_dir / p["run"] / "summary.json").read_text())
        assert summary["link_rate_mbps"] == pytest.approx(20.0)
        assert summary["flows"][0]["goodput_mbps"] < 20.5
    # the link is back to the testbed's own rate afterwards
    assert tb.run("r1", ["tc", "class", "show", "dev", "e-rx"]).stdout.count("rate 50Mbit") == 1

    # pretend the second point never finished: --resume runs only that one
    data["points"][1].update(status="aborted")
    (sweep_dir / "sweep.json").write_text(json.dumps(data))
    first_run = data["points"][0]["run"]
    res = run_cli("run", "--testbed", name, "--resume", str(sweep_dir), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    after = json.loads((sweep_dir / "sweep.json").read_text())
    assert after["points"][0]["run"] == first_run
    assert after["points"][1]["status"] == "complete"
    assert list(sweep.pending(sweep_dir)) == []
