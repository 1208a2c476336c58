"""`testbed regress`: the suite file, metric paths, tolerances, the comparison table and the
exit status (from an earlier run's current.json, so no traffic is needed here)."""

from __future__ import annotations

import csv
import json

import pytest

from orchestrator.errors import SpecError, UserError
from orchestrator.experiment import regress as rg

from conftest import run_cli

SUITE = """\
name: unit
duration: 5s
metrics:
  utilization: {abs: 0.1}
  queue_delay_ms.l4s.p95: {abs: 2, rel: 0.5}
  flows[cubic].goodput_mbps: {rel: 0.2}
cases:
  - name: dumbbell
    scenario: {duration: 5s, flows: [{name: cubic, kind: tcp, src: s1, dst: rx}]}
    policies: [fifo, dualpi2]
    metrics:
      jain_index: {abs: 0.05}
"""

SUMMARY = {"status": "complete", "utilization": 0.93, "jain_index": 0.99, "queue_delay_ms":
           {"l4s": {"p95": 1.5, "p50": 0.4}, "classic": {"p95": 40.0}},
           "flows": [{"name": "cubic", "goodput_mbps": 18.4}, {"name": "l4s", "goodput_mbps": float("nan")}]}


def test_metric_paths():
    assert rg.metric(SUMMARY, "utilization") == 0.93
    assert rg.metric(SUMMARY, "queue_delay_ms.l4s.p95") == 1.5
    assert rg.metric(SUMMARY, "flows[cubic].goodput_mbps") == 18.4
    assert rg.metric(SUMMARY, "flows[l4s].goodput_mbps") is None  # NaN is no value
    assert rg.metric(SUMMARY, "flows[nope].goodput_mbps") is None
    assert rg.metric(SUMMARY, "queue_delay_ms.l4s") is None  # not a number
    assert rg.metric(SUMMARY, "status") is None


def test_tolerance_is_the_larger_of_abs_and_rel():
    t = rg.Tolerance(abs=2, rel=0.5)
    assert t.allows(10, 15) and not t.allows(10, 15.1)
    assert t.allows(1, 2.9) and not t.allows(1, 3.1)  # abs wins for small baselines
    assert rg.Tolerance().allows(1.0, 1.0) and not rg.Tolerance().allows(1.0, 1.0001)
    assert t.describe() == "±2 or ±50%"


def test_compare_statuses():
    tols = {"c/p": {"a": rg.Tolerance(abs=1), "b": rg.Tolerance(rel=0.1), "c": rg.Tolerance(abs=1),
                    "d": rg.Tolerance(abs=1)},
            "c/q": {"a": rg.Tolerance(abs=1)}}
    current = {"c/p": {"a": 10.5, "b": 12.0, "c": None, "d": 3.0, "_status": "complete"},
               "c/q": {"a": 1.0, "_status": "failed: host r1 unreachable"}}
    baseline = {"c/p": {"a": 10.0, "b": 10.0, "c": 1.0}, "c/q": {"a": 1.0}}
    rows = {(r.case, r.metric): r for r in rg.compare(current, baseline, tols)}
    assert rows[("c/p", "a")].status == "ok" and rows[("c/p", "a")].delta == pytest.approx(0.5)
    assert rows[("c/p", "b")].status == "DRIFT"
    assert rows[("c/p", "c")].status == "missing"
    assert rows[("c/p", "d")].status == "new"
    assert rows[("c/q", "a")].status == "failed"
    assert not rg.passed(list(rows.values()))
    assert rg.passed([rows[("c/p", "a")]])
    # a metric present now but absent in the baseline is a change too (issue 10, finding 8)
    assert not rg.passed([rows[("c/p", "a")], rows[("c/p", "d")]])


def test_suite_errors_name_the_key(tmp_path):
    path = tmp_path / "s.yaml"
    for text, where, what in [
        (SUITE.replace("policies: [fifo, dualpi2]", "policies: []"), "cases[0].policies", "at least one"),
        (SUITE.replace("utilization: {abs: 0.1}", "utilization: {abs: -1}"), "metrics.utilization.abs",
         "greater than or equal"),
        (SUITE.replace("jain_index:", "'jain index':"), "cases[0].metrics.jain index", "dotted path"),
        (SUITE.replace("name: dumbbell", "name: Dumb Bell"), "cases[0].name", "case name"),
        (SUITE + "  - {name: dumbbell, scenario: x.yaml, policies: [fifo]}\n", "cases[1].name", "duplicate"),
        (SUITE.replace("duration: 5s\n", "duration: 5s\nrepeats: 3\n", 1), "repeats", "unknown key"),
        (SUITE.replace("metrics:\n  utilization", "metricz:\n  utilization"), "metrics", "required"),
    ]:
        path.write_text(text)
        with pytest.raises(SpecError) as e:
            rg.load_suite(path)
        assert e.value.path == where and what in e.value.message, (where, str(e.value))
    path.write_text(SUITE)
    suite = rg.load_suite(path)
    assert set(rg.tolerances(suite)) == {"dumbbell/fifo", "dumbbell/dualpi2"}
    assert "jain_index" in rg.tolerances(suite)["dumbbell/fifo"]


def test_baseline_round_trip_and_guards(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    suite = rg.load_suite(path)
    current = {"dumbbell/fifo": {"utilization": 0.9, "jain_index": None, "_status": "complete", "_run": "x"}}
    base = tmp_path / "b.json"
    rg.write_baseline(base, suite, current, {"provider": "netns"})
    assert rg.read_baseline(base, suite) == {"dumbbell/fifo": {"utilization": 0.9}}
    with pytest.raises(UserError, match="did not complete"):
        rg.write_baseline(base, suite, {"dumbbell/fifo": {"_status": "aborted"}}, {})
    other = tmp_path / "o.yaml"
    other.write_text(SUITE.replace("name: unit", "name: other"))
    with pytest.raises(UserError, match="baseline of suite 'unit'"):
        rg.read_baseline(base, rg.load_suite(other))
    with pytest.raises(UserError, match="--update-baseline"):
        rg.read_baseline(tmp_path / "none.json", suite)


def _current(util: float, p95: float) -> dict:
    vals = {"utilization": util, "queue_delay_ms.l4s.p95": p95, "flows[cubic].goodput_mbps": 18.0,
            "jain_index": 0.99, "_status": "complete", "_run": "r"}
    return {"dumbbell/fifo": dict(vals), "dumbbell/dualpi2": dict(vals)}


def test_cli_writes_the_table_and_exits_1_on_drift(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    cur = tmp_path / "current.json"
    cur.write_text(json.dumps(_current(0.93, 1.5)))
    base = tmp_path / "baseline.json"
    res = run_cli("regress", str(suite), "--baseline", str(base), "--update-baseline", "--current", str(cur),
                  "--results", str(tmp_path / "results"))
    assert res.returncode == 0 and "baseline written" in res.stdout, res.stderr
    # within tolerance: exit 0
    cur.write_text(json.dumps(_current(0.88, 2.4)))
    res = run_cli("regress", str(suite), "--baseline", str(base), "--current", str(cur),
                  "--results", str(tmp_path / "results"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok: 8 checks within tolerance" in res.stdout
    # utilization dropped by 0.2: past ±0.1, exit 1, and the CSV says which
    cur.write_text(json.dumps(_current(0.73, 1.5)))
    res = run_cli("regress", str(suite), "--baseline", str(base), "--current", str(cur),
                  "--results", str(tmp_path / "results"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "regression: 2 of 8 checks failed (DRIFT)" in res.stderr
    table = sorted((tmp_path / "results").glob("regress-unit-*/comparison.csv"))[-1]
    rows = list(csv.DictReader(table.open()))
    drift = [(r["case"], r["metric"]) for r in rows if r["status"] == "DRIFT"]
    assert drift == [("dumbbell/fifo", "utilization"), ("dumbbell/dualpi2", "utilization")]
    assert rows[0].keys() >= {"baseline", "current", "delta", "tolerance"}


def test_cli_refuses_a_missing_baseline_before_running(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    res = run_cli("regress", str(suite), "--baseline", str(tmp_path / "nope.json"), "--testbed", "nope")
    assert res.returncode == 2 and "--update-baseline" in res.stderr
