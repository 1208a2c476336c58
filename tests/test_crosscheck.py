"""The crosscheck's distances and verdict (unit), and nfqueue against ebpf DualPI2 on the
default-like testbed (integration): they must agree within the stated tolerances."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.analysis import crosscheck as xc

from conftest import needs_root


def test_w1_is_the_mean_gap_of_sorted_samples_and_a_shift_is_its_size():
    rng = np.random.default_rng(5)
    a, b = rng.exponential(1.0, 4000), rng.exponential(1.3, 4000)
    # for equal sizes, W1 = mean |a_(i) - b_(i)| (the quantile coupling): an independent formula
    assert xc.wasserstein1(a, b) == pytest.approx(np.mean(np.abs(np.sort(a) - np.sort(b))), rel=1e-9)
    assert xc.wasserstein1(a, a + 0.25) == pytest.approx(0.25, rel=1e-9)
    assert xc.wasserstein1(a, a) == 0.0
    # unequal sizes: W1 of a two-point distribution against a point mass is its mean distance
    assert xc.wasserstein1(np.array([0.0, 2.0]), np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert math.isnan(xc.wasserstein1(a, np.array([])))


def test_ks_is_the_largest_cdf_gap():
    assert xc.ks_statistic(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert xc.ks_statistic(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.5, 3.5])) == 0.5
    rng = np.random.default_rng(6)
    a = rng.normal(0, 1, 5000)
    assert xc.ks_statistic(a, rng.normal(0, 1, 5000)) < 0.04  # same law: small
    # the brute-force sup over a fine grid of x, independent of the merged-sample formula
    b = rng.normal(0.3, 1, 300)
    grid = np.linspace(-5, 5, 20001)
    brute = np.max(np.abs((a[:, None] <= grid).mean(0) - (b[:, None] <= grid).mean(0)))
    assert xc.ks_statistic(a, b) == pytest.approx(brute, abs=2e-3)


def _run(dp: str, util: float, l4s: float, classic: float, ratio: float = 1.0,
         seed: int = 0) -> xc.RunFigures:
    rng = np.random.default_rng(seed)
    fig = {f: 0.0 for f in xc.FIGURES}
    fig.update(utilisation=util, l4s_p99_ms=l4s, classic_p50_ms=classic, rate_ratio=ratio)
    return xc.RunFigures(dp, f"{dp}{seed}", fig, {"l4s": rng.exponential(l4s / 4.6, 2000),
                                                   "classic": rng.normal(classic, 2.0, 2000)})


def test_verdict_follows_each_tolerance():
    ref = [_run("nfqueue", 0.98, 0.7, 13.0, seed=s) for s in range(2)]
    same = xc.compare(ref + [_run("ebpf", 0.975, 0.8, 14.0, seed=10 + s) for s in range(2)],
                      ["nfqueue", "ebpf"])
    assert same["verdict"] == "agree", same["checks"]
    for change, figure in ((dict(util=0.95), "utilisation"), (dict(l4s=1.3), "l4s_p99_ms"),
                           (dict(classic=18.0), "classic_p50_ms"), (dict(ratio=1.5), "rate_ratio")):
        args = {"util": 0.975, "l4s": 0.8, "classic": 14.0, **change}
        other = xc.compare(ref + [_run("ebpf", **args, seed=20 + s) for s in range(2)], ["nfqueue", "ebpf"])
        bad = {c["figure"] for c in other["checks"] if c["ok"] is False}
        assert other["verdict"] == "disagree" and figure in bad, (change, other["checks"])
    assert same["reference"] == "nfqueue" and same["repetitions"] == {"nfqueue": 2, "ebpf": 2}



def test_a_gap_within_one_datapaths_own_spread_is_noise():
    """classic p50: nfqueue runs 7.5 and 10.5 ms (mean 9), ebpf 10 and 14 (mean 12). The 3 ms
    gap is over 30% of 9 but inside ebpf's own 4 ms range; ebpf at 16 and 16.2 is not."""
    def runs(dp: str, values: list[float]) -> list[xc.RunFigures]:
        return [_run(dp, 0.98, 0.7, v, seed=i + (10 if dp == "ebpf" else 0)) for i, v in enumerate(values)]

    def check(ebpf: list[float]) -> dict:
        result = xc.compare(runs("nfqueue", [7.5, 10.5]) + runs("ebpf", ebpf), ["nfqueue", "ebpf"])
        return next(c for c in result["checks"] if c["figure"] == "classic_p50_ms")

    assert check([10.0, 14.0])["ok"] is True and check([10.0, 14.0])["tolerance"] == "+-4"
    assert check([16.0, 16.2])["ok"] is False  # 7.1 ms away; the ranges are 3 and 0.2


def test_l4s_p99_tolerance_is_two_packets_at_a_slow_link():
    """0.5 ms at 50 Mbit/s (two packets take 0.48 ms); two packets, 2.42 ms, at 10 Mbit/s."""
    assert xc.tolerance("l4s_p99_ms", 0.7, 50.0) == 0.5
    assert xc.tolerance("l4s_p99_ms", 4.0, 10.0) == pytest.approx(2 * 1514 * 8 / 10e3)
    assert xc.within("l4s_p99_ms", 3.4, 4.05, 10.0) and not xc.within("l4s_p99_ms", 3.4, 4.05, 50.0)
    assert xc.tolerance("classic_p50_ms", 10.0, 10.0) == pytest.approx(3.0)  # relative: no packet floor


def test_classes_compare_by_codepoint_whatever_queue_the_datapath_used():
    import pandas as pd

    # one FIFO on ebpf logs every packet as classic; the ECT(1) and CE ones are L4S traffic
    pkts = pd.DataFrame({"cls": [1, 1, 1, 1], "ecn_in": [1, 3, 2, 0], "sojourn_ms": [1.0] * 4})
    assert xc.by_codepoint(pkts)["cls"].tolist() == [0, 0, 1, 1]

@pytest.mark.integration
@pytest.mark.slow
@needs_root
def test_nfqueue_and_ebpf_dualpi2_agree_on_the_default_testbed(netns_testbed, tmp_path):
    """The default testbed (50 Mbit/s, 20 ms, 1.5 BDP), L4S + CUBIC, DualPI2 with its
    defaults, twice on each datapath: utilisation, L4S p99 and classic median delay within
    the tolerances of orchestrator/analysis/crosscheck.py (their reasons are there), and the
    L4S sojourn distributions within W1 limit. Before the ebpf L class borrowed the link's
    rate, its L4S p99 was 0.09-0.28 ms against nfqueue's 0.72-0.89 (W1 0.29 ms, KS 0.92)."""
    from orchestrator.experiment import crosscheck
    from orchestrator.experiment.run import RunConfig
    from orchestrator.spec.scenario import Scenario

    from conftest import dumbbell_yaml, unique_name

    tb = netns_testbed(dumbbell_yaml(unique_name("xc")))
    scenario = Scenario.model_validate({"duration": "15s", "flows": [
        {"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx"},
        {"name": "cubic", "kind": "tcp", "src": "s2", "dst": "rx", "cc": "cubic"}]})
    directory = crosscheck.create(tb, tmp_path, scenario, RunConfig(policy="dualpi2"), repeat=2,
                                  link={}, names=("nfqueue", "ebpf", "kernel"))
    result = crosscheck.execute(tb, directory)
    from orchestrator.analysis.crosscheck import lines

    print("\n" + "\n".join(lines(result, result["skipped"])))
    assert result["repetitions"]["nfqueue"] == result["repetitions"]["ebpf"] == 2
    # the kernel datapath ran, or says why not (here: no sch_dualpi2), never silently absent
    assert "kernel" in result["repetitions"] or "dualpi2" in result["skipped"]["kernel"]
    assert (directory / "crosscheck.csv").read_text().startswith("datapath,figure,mean,min,max")
    checks = {c["figure"]: c for c in result["checks"] if c["datapath"] == "ebpf"}
    for figure in ("utilisation", "l4s_p99_ms", "classic_p50_ms", "l4s_w1_ms"):
        assert checks[figure]["ok"] is True, checks[figure]


@pytest.mark.integration
@needs_root
def test_cli_refuses_a_policy_only_one_datapath_runs(netns_testbed, tmp_path):
    """CoDel acts per packet at dequeue: only nfqueue runs it, so there is nothing to compare;
    the command says which datapaths could not and why, before any run starts."""
    from conftest import dumbbell_yaml, run_cli, unique_name

    name = unique_name("xq")
    netns_testbed(dumbbell_yaml(name, scenario="scenario:\n  duration: 5s\n  flows:\n"
                                "    - {name: c, kind: tcp, src: s1, dst: rx, cc: cubic}\n"))
    out = tmp_path / "results"
    res = run_cli("crosscheck", "--testbed", name, "--policy", "codel", "--results", str(out))
    assert res.returncode == 2, res
    assert "crosscheck needs two datapaths" in res.stderr and "ebpf: policy 'codel'" in res.stderr, res.stderr
    assert not out.exists()  # no directory, no run


@pytest.mark.integration
@pytest.mark.slow
@needs_root
def test_nfqueue_and_ebpf_dualpi2_agree_on_a_slow_long_link(netns_testbed, tmp_path):
    """Issue 16's low-rate case: 10 Mbit/s, 80 ms, one L4S flow among four CUBIC flows. A
    packet takes 1.2 ms, more than the 1 ms step, so whether an L packet waits for the packet
    in service, and whether the step counts that wait, decide the L4S flow's share. Seen
    before the ebpf fixes: L4S 0.44 Mbit/s on nfqueue against 1.64 on ebpf (rate ratio 0.05
    against 0.21); after: 0.44 against 0.47."""
    from orchestrator.analysis.crosscheck import lines
    from orchestrator.experiment import crosscheck
    from orchestrator.experiment.run import RunConfig
    from orchestrator.spec.scenario import Scenario

    from conftest import dumbbell_yaml, unique_name

    tb = netns_testbed(dumbbell_yaml(unique_name("xl"), rate="10mbit", rtt="80ms"))
    scenario = Scenario.model_validate({"duration": "20s", "flows": [
        {"name": "l4s", "kind": "l4s", "src": "s1", "dst": "rx"},
        *({"name": f"c{i}", "kind": "tcp", "src": "s2", "dst": "rx", "cc": "cubic"} for i in range(4))]})
    directory = crosscheck.create(tb, tmp_path, scenario, RunConfig(policy="dualpi2"), repeat=2,
                                  link={}, names=("nfqueue", "ebpf"))
    result = crosscheck.execute(tb, directory)
    print("\n" + "\n".join(lines(result, result["skipped"])))
    checks = {c["figure"]: c for c in result["checks"]}
    for figure in ("rate_ratio", "l4s_p99_ms", "l4s_w1_ms"):
        assert checks[figure]["ok"] is True, checks[figure]
    # The step's share of the L4S marks: without the wait for the link's bucket in ebpf's
    # predicted sojourn (mutation tried), ebpf marked 0.352 against nfqueue's 0.445 (21% less;
    # L4S 0.58 against 0.46 Mbit/s) and this fails. Tolerance 12%: nfqueue against itself
    # spread 0.435-0.468 (7%) over six 20 s runs; with the wait ebpf was 6-9% under nfqueue.
    # Under load the gap grows while each datapath stays tight (two CI full suites at load 5-6:
    # 0.465 against 0.408, 12.3%; 0.466 [0.464-0.468] against 0.404 [0.398-0.409], 13.4%), so
    # the tolerance is 16%: still under the mutation's 21%. Widened, like every crosscheck
    # tolerance, to either datapath's own range over its runs.
    figs = {dp: result["figures"][dp]["l4s_mark_rate"] for dp in ("nfqueue", "ebpf")}
    marks = {dp: f["mean"] for dp, f in figs.items()}
    limit = max(0.16 * marks["nfqueue"], *(f["max"] - f["min"] for f in figs.values()))
    assert abs(marks["ebpf"] - marks["nfqueue"]) <= limit, (figs, limit)
