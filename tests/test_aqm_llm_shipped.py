"""The shipped model (models/aqm-llm-coupled, models/aqm-llm-coupled-student) and the never-late deployment:
the defaults load it and decide deterministically; the worker process decides what the
in-process model decides; a late answer keeps the decision in force and the model's context
holds the applied action, not the proposed one (issue 14, item 6); int8 and the early exit
stay close to float32 in log-probability terms."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

import policies
from orchestrator.bottleneck.control import ControlLoop
from policies.aqm_llm import dataset as D
from policies.aqm_llm.policy import DEFAULT_CHECKPOINT, NO_SIGNAL, AqmLlmPolicy
from policies.aqm_llm.student import DEFAULT_STUDENT
from policies.base import Decision

from conftest import ROOT, dumbbell_yaml, needs_root, run_cli, unique_name

torch.set_num_threads(1)
N_STATES = 24


@pytest.fixture(scope="module")
def states() -> list:
    """Consecutive states of a DualPI2 episode of the shipped pool (the real link's telemetry)."""
    pool = pd.read_parquet(ROOT / "models" / "aqm-llm-coupled" / "pool.parquet")
    pool = pool[pool["episode"].str.contains("dualpi2")]
    rows = next(D.episodes(pool))[1]
    return list(D.states(rows.iloc[200:200 + N_STATES]))


def decisions(policy, states) -> np.ndarray:
    out = []
    for s in states:
        d = policy.update(s)
        assert isinstance(d, Decision)
        out.append([[d.l4s.p_drop, d.l4s.p_mark], [d.classic.p_drop, d.classic.p_mark]])
    return np.array(out)


def test_the_shipped_model_is_the_default_and_decides_deterministically(states):
    a = policies.make("aqm-llm", {"worker": "false"})
    assert a.settings["early_exit_layers"] == 4 and a.settings["precision"] == "int8"  # its deploy
    first = decisions(a, states)
    second = decisions(policies.make("aqm-llm", {"worker": "false"}), states)
    np.testing.assert_array_equal(first, second)
    assert ((first >= 0) & (first <= 1)).all()
    assert first[:, 0, 1].std() > 0  # it reacts to the state: not a constant


def test_the_shipped_student_is_the_default_and_decides_deterministically(states):
    student = policies.make("aqm-llm-student", {})
    assert student.student.layers[0][0].shape[1] == 64
    first, second = decisions(student, states), decisions(policies.make("aqm-llm-student", {}), states)
    np.testing.assert_array_equal(first, second)
    assert ((first >= 0) & (first <= 1)).all()


# The worker's mechanics (pipelining, late answers, the context) on the coupled model, whose
# pipelined answer is exactly the previous state's; the shipped anchored model re-anchors its
# answer on the current tick (tests/test_aqm_llm_anchored.py checks that through the worker).
COUPLED = str(ROOT / "models" / "aqm-llm-coupled")


def in_loop(args: dict, states: list, pause_s: float) -> tuple[np.ndarray, ControlLoop]:
    policy = policies.make("aqm-llm", {"checkpoint": COUPLED, **args})
    loop = ControlLoop(policy, tupdate_s=0.016, log_dir=None, deadline_s=60.0)
    out = []
    try:
        assert policy.worker is not None and policy.model is None  # one copy, in the worker
        for s in states:
            d = loop.step(s, 0.0)
            out.append([[d.l4s.p_drop, d.l4s.p_mark], [d.classic.p_drop, d.classic.p_mark]])
            time.sleep(pause_s)  # a tick's worth of time for the worker
    finally:
        loop.close()
    return np.array(out), loop


def test_the_worker_decides_what_the_in_process_model_decides(states):
    here = decisions(policies.make("aqm-llm", {"worker": "false", "checkpoint": COUPLED}), states)
    waited, loop = in_loop({"pipelined": "false", "deadline_ms": "60000"}, states, 0.0)
    np.testing.assert_allclose(waited, here, rtol=1e-9, atol=1e-12)
    assert loop.missed == 0 and loop.stats()["worker_answers"] == len(states)


def test_pipelined_the_decision_of_each_tick_comes_from_the_previous_state(states):
    here = decisions(policies.make("aqm-llm", {"worker": "false", "checkpoint": COUPLED}), states)
    piped, loop = in_loop({}, states, 0.25)  # ample time: no answer is late
    assert loop.missed == 0 and loop.stats()["worker_compute_us_p50"] > 0
    assert (piped[0] == 0).all()  # nothing computed yet: no signal
    np.testing.assert_allclose(piped[1:], here[:-1], rtol=1e-9, atol=1e-12)


def test_pipelined_a_late_answer_is_dropped_and_the_worker_context_holds_what_was_applied(states):
    """The answer to state 1 is not there at tick 2 (made so by hiding it once): ticks 2 and 3
    are late and keep no signal; state 2 is never sent (the worker was busy); the worker
    commits no signal, not its own late proposal, after state 1. An in-process replay of
    exactly that gives the decisions applied at ticks 4-6."""
    policy = policies.make("aqm-llm", {"checkpoint": COUPLED})
    loop = ControlLoop(policy, tupdate_s=0.016, log_dir=None, deadline_s=60.0)
    real_collect, out = policy.worker.collect, []
    try:
        for i, s in enumerate(states[:6]):
            policy.worker.collect = (lambda deadline: None) if i == 1 else real_collect
            d = loop.step(s, 0.0)
            out.append([[d.l4s.p_drop, d.l4s.p_mark], [d.classic.p_drop, d.classic.p_mark]])
            time.sleep(0.25)
    finally:
        loop.close()
    assert loop.missed == 2 and loop.stats()["worker_late_answers_dropped"] == 1
    out = np.array(out)
    assert (out[:3] == 0).all()
    replay = policies.make("aqm-llm", {"worker": "false", "checkpoint": COUPLED})
    def vector(state):  # the shipped model's feature set (the current one: no dt_ms)
        return D.F.state_vector(state, replay.stats.names)

    assert replay.stats.names == D.F.SCALAR_NAMES
    replay.propose(vector(states[0]))  # its answer came late: NO_SIGNAL stays applied
    expected = []
    for s in states[2:5]:
        probs = replay.propose(vector(s)).tolist()
        replay.applied = probs
        expected.append([[probs[0][1], probs[0][2]], [probs[1][1], probs[1][2]]])
    np.testing.assert_allclose(out[3:], np.array(expected), rtol=1e-9, atol=1e-12)


def test_a_late_answer_keeps_the_decision_in_force_and_the_context_holds_it(states):
    """Every answer misses a deadline of 1 us: the loop keeps Decision() (no signal), counts each
    miss, and the model's context commits that applied action; the model's own proposals, which
    differ, never enter it."""
    policy = policies.make("aqm-llm", {"worker": "false", "deadline_ms": "0.001", "checkpoint": COUPLED})
    loop = ControlLoop(policy, tupdate_s=0.016, log_dir=None, deadline_s=60.0)
    for s in states[:5]:
        assert loop.step(s, 0.0) == Decision()
    assert loop.missed == 5 and policy.late_updates == 5
    applied = policy.model.action_token(torch.tensor(NO_SIGNAL, dtype=torch.float32))
    committed = [step[-1] for step in policy.context.steps]
    assert len(committed) == 4 and all(torch.equal(c, applied[0]) for c in committed)
    proposed = policy.model.action_token(policy.propose(D.F.state_vector(states[5])).float())
    assert not torch.allclose(proposed, applied)  # so the check above can tell them apart


def test_int8_and_the_early_exit_stay_close_in_log_probability(states):
    """The decisions that matter are small probabilities: compare them in log space."""
    def log_probs(**args) -> np.ndarray:
        p = decisions(AqmLlmPolicy(policies.resolve("aqm-llm").Params(worker=False, **args)), states)
        return np.log(np.maximum(p[:, :, 1], 1e-6))  # marks per class

    f32 = log_probs(precision="float32", early_exit_layers=4)
    int8 = log_probs(precision="int8", early_exit_layers=4)
    err = np.abs(int8 - f32).max(axis=0)  # per class: L4S, classic
    # The coupled model: p_C = p'^2 doubles an error in p', so classic is bound looser. Seen on
    # these states: L4S within 1.42x, classic within 2.73x (the model card's "Limits").
    assert err[0] < np.log(2.0) and err[1] < np.log(3.0), err


def test_the_default_checkpoints_live_in_the_repository():
    """Committed under models/ (a path outside the checkout would not exist on a fresh clone),
    with the files a model and a student load."""
    assert all(d.is_relative_to(ROOT / "models") for d in (DEFAULT_CHECKPOINT, DEFAULT_STUDENT))
    assert (DEFAULT_CHECKPOINT / "config.json").is_file() and (DEFAULT_CHECKPOINT / "stats.json").is_file()
    assert (DEFAULT_STUDENT / "student.safetensors").is_file()


@needs_root
@pytest.mark.slow  # two real runs with traffic
@pytest.mark.parametrize("policy", ["aqm-llm", "aqm-llm-student"])
def test_testbed_run_with_no_arguments_runs_the_shipped_models(policy, netns_testbed, tmp_path):
    name = unique_name("mls")
    netns_testbed(dumbbell_yaml(name, scenario="scenario:\n  duration: 4s\n  flows:\n"
                                               "    - {name: l4s, kind: l4s, src: s1, dst: rx}\n"
                                               "    - {name: c, kind: tcp, src: s2, dst: rx, cc: cubic}\n"))
    res = run_cli("run", "--testbed", name, "--policy", policy, "--results", str(tmp_path), "--json",
                  timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["status"] == "complete" and summary["policy"] == policy
    assert summary["decisions"] > 150 and summary["missed_deadlines"] is not None
    assert summary["utilization"] > 0.3
