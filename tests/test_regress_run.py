"""`testbed regress` end to end on the local provider: a one-case suite runs, writes a
baseline, and a second run compares within tolerance (exit 0) with a table of every metric."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import dumbbell_yaml, needs_root, run_cli, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_root]

SUITE = """\
name: tiny
duration: 4s
metrics:
  utilization: {abs: 0.15}
  queue_delay_ms.classic.p50: {abs: 5, rel: 0.5}
  flows[cubic].goodput_mbps: {rel: 0.3}
cases:
  - name: one-cubic
    scenario:
      duration: 4s
      flows: [{name: cubic, kind: tcp, src: s1, dst: rx, cc: cubic, duration: 4s}]
    policies: [fifo]
"""


def test_regress_baseline_then_compare(netns_testbed, tmp_path):
    name = unique_name("rgr")
    netns_testbed(dumbbell_yaml(name, rate="20mbit", rtt="20ms"))
    suite = tmp_path / "tiny.yaml"
    suite.write_text(SUITE)
    base = tmp_path / "baseline.json"
    results = tmp_path / "results"
    res = run_cli("regress", str(suite), "--baseline", str(base), "--update-baseline", "--testbed", name,
                  "--results", str(results), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(base.read_text())
    values = data["results"]["one-cubic/fifo"]
    assert set(values) == {"utilization", "queue_delay_ms.classic.p50", "flows[cubic].goodput_mbps"}
    assert 0.7 < values["utilization"] <= 1.05 and 14 < values["flows[cubic].goodput_mbps"] < 21
    assert data["testbed"]["provider"] == "netns"
    res = run_cli("regress", str(suite), "--baseline", str(base), "--testbed", name,
                  "--results", str(results), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    table = sorted(results.glob("regress-tiny-*/comparison.csv"))[-1]
    rows = list(csv.DictReader(table.open()))
    assert [r["status"] for r in rows] == ["ok"] * 3, rows
    runs = list(table.parent.glob("*-fifo-nfqueue/summary.json"))
    assert runs, "the suite's runs are kept beside the comparison"
