"""AQM-LLM distillation, the student policy, and the `testbed pool/train/distill` commands."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from test_aqm_llm_data import write_run

import policies
from orchestrator.cli import cli
from policies.aqm_llm import dataset as D
from policies.aqm_llm.checkpoint import save_checkpoint
from policies.aqm_llm.distill import fit_student, teacher_labels
from policies.aqm_llm.features import from_rows
from policies.aqm_llm.model import AqmLlm, ModelConfig
from policies.aqm_llm.student import Student, StudentPolicy, _softmax, student_inputs
from policies.base import ClassState, QueueState
from policies.errors import PolicyError as UserError

from conftest import run_cli

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    return D.synthetic_pool(behaviours=("dualpi2", "pie"), seconds=1.5)


@pytest.fixture(scope="module")
def teacher_dir(pool, tmp_path_factory):
    """A tiny AQM-LLM whose weights are moved off their init, so its decisions vary by state
    (its head starts unbiased, not at 'enqueue almost always')."""
    torch.manual_seed(0)
    model = AqmLlm(ModelConfig(backbone="tiny", window=4, lora_rank=4))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
        model.head.proj.bias.zero_()
    return save_checkpoint(model, D.prepare(pool, gamma=0.98)[2], tmp_path_factory.mktemp("t") / "teacher")


@pytest.fixture(scope="module")
def labels(pool, teacher_dir):
    return teacher_labels(policies.make("aqm-llm", {"checkpoint": str(teacher_dir)}), pool)


def test_the_student_follows_the_teacher_on_held_out_episodes(labels):
    weights, metrics = fit_student(labels, steps=600, seed=0)
    p = labels["p"][..., 1:]
    baseline = float(np.abs(p - p.mean(0)).mean())  # predicting the teacher's mean decision
    # 0.50 with the pool before issue 14, 0.72 since: exploration at the scale of real
    # probabilities and the stratified split change the (random) teacher's decisions; one
    # held-out episode of six. In log space, where control errors live, it is within 10%.
    assert metrics["val_mae_p"] < 0.8 * baseline
    assert metrics["val_log10_err_l4s"] < 0.1 and metrics["val_log10_err_classic"] < 0.1
    assert [w.shape for w, _ in weights] == [(labels["x"].shape[1], 64), (64, 64), (64, 6)]


def test_student_policy_fast_path_equals_the_batch_path_and_survives_a_reload(labels, pool, teacher_dir,
                                                                              tmp_path):
    weights, _ = fit_student(labels, steps=50)
    stats = policies.make("aqm-llm", {"checkpoint": str(teacher_dir)}).stats
    flat = {k: v for i, (w, b) in enumerate(weights) for k, v in ((f"w{i}", w), (f"b{i}", b))}
    student = Student(flat, stats)
    student.save(tmp_path / "st", {"note": "test"})
    policy = policies.make("aqm-llm-student", {"checkpoint": str(tmp_path / "st")})
    rows = next(D.episodes(pool))[1]
    inputs = student_inputs(stats.apply(from_rows(rows)))
    batch = student.probs(inputs)
    for i, s in enumerate(D.states(rows)):
        np.testing.assert_allclose(policy.student.state_input(s), inputs[i], atol=1e-6)
        d = policy.update(s)
        assert d.l4s.p_drop == pytest.approx(batch[i, 0, 1], abs=1e-6)
        assert d.classic.p_mark == pytest.approx(batch[i, 1, 2], abs=1e-6)
        assert d.l4s.step_threshold_ms == 1.0 and d.classic.step_threshold_ms is None
    assert isinstance(policy, StudentPolicy) and policy.queue_config().dualq


def test_a_student_directory_with_a_pickle_is_refused(labels, teacher_dir, tmp_path):
    weights, _ = fit_student(labels, steps=1)
    stats = policies.make("aqm-llm", {"checkpoint": str(teacher_dir)}).stats
    flat = {k: v for i, (w, b) in enumerate(weights) for k, v in ((f"w{i}", w), (f"b{i}", b))}
    Student(flat, stats).save(tmp_path / "st", {})
    (tmp_path / "st" / "student.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UserError, match="pickle"):
        Student.load(tmp_path / "st")
    with pytest.raises(UserError, match="no student.safetensors"):
        Student.load(tmp_path)


def test_pool_train_distill_commands(pool, tmp_path):
    for i, (_, rows) in enumerate(list(D.episodes(pool))[:4]):
        write_run(tmp_path / "results", f"run-{i}", rows, f"scen-{i % 2}")
    res = run_cli("pool", "build", str(tmp_path / "results"), "--out", str(tmp_path / "pool.parquet"))
    assert res.returncode == 0, res.stderr
    assert "4 episodes" in res.stdout
    runner = CliRunner()
    pool_file = str(tmp_path / "pool.parquet")
    args = ["--backbone", "tiny", "--steps", "4", "--batch", "4", "--window", "4", "--threads", "1",
            "--exits", "2"]
    out = runner.invoke(cli, ["train", "--pool", pool_file, "--out", str(tmp_path / "ck"), *args],
                        catch_exceptions=False)
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output[out.output.index("{"):])
    assert summary["steps"] == 4 and (tmp_path / "ck" / "latest.json").is_file()
    out = runner.invoke(cli, ["distill", "--checkpoint", str(tmp_path / "ck"), "--pool", pool_file,
                              "--out", str(tmp_path / "st"), "--steps", "20", "--threads", "1",
                              "--early-exit-layers", "2"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert (tmp_path / "st" / "student.safetensors").is_file()
    info = json.loads((tmp_path / "st" / "student.json").read_text())
    assert info["teacher_settings"]["early_exit_layers"] == 2


def test_a_wrong_backbone_is_one_line_of_error_not_a_traceback(tmp_path, pool):
    pool.to_parquet(tmp_path / "pool.parquet")
    res = run_cli("train", "--pool", str(tmp_path / "pool.parquet"), "--out", str(tmp_path / "ck"),
                  "--backbone", str(tmp_path / "no-such-model"), "--steps", "1")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "no such directory" in res.stderr


@pytest.mark.parametrize("name", ["aqm-llm", "aqm-llm-student"])
def test_the_llm_policies_default_to_the_shipped_models(name, monkeypatch, tmp_path):
    """No checkpoint argument: the model shipped in models/ (a missing one says where it looked)."""
    from policies.aqm_llm import policy as llm
    from policies.aqm_llm import student as st

    monkeypatch.setattr(llm, "DEFAULT_CHECKPOINT", tmp_path / "gone")
    monkeypatch.setattr(st, "DEFAULT_STUDENT", tmp_path / "gone")
    with pytest.raises(UserError, match="gone"):
        policies.make(name, {})


def _random_state(rng: random.Random) -> QueueState:
    """A live state with values across decades, zeros, and histories of any length 0-16."""
    from policies.aqm_llm.features import CLASS_KEYS

    counts = ("backlog_bytes", "backlog_pkts", "arrivals", "drops", "marks")
    per = {}
    for cls in ("l4s", "classic"):
        vals = {k: rng.choice([0.0, rng.random() * 10 ** rng.uniform(-2, 8)]) for k in CLASS_KEYS}
        per[cls] = ClassState(**{k: int(v) if k in counts else v for k, v in vals.items()})
    n = [rng.randint(0, 16) for _ in range(4)]
    return QueueState(
        t=1.0, dt=rng.uniform(0.01, 0.03), link_rate_bps=rng.choice([0.0, 1e6, 5e7, 2e8]), **per,
        sojourn_history={c: tuple(rng.random() * 50 for _ in range(k))
                         for c, k in zip(("l4s", "classic"), n[:2], strict=True)},
        rate_history={c: tuple(rng.random() * 1e8 for _ in range(k))
                      for c, k in zip(("l4s", "classic"), n[2:], strict=True)})


def test_the_c_student_decides_as_the_numpy_one():
    """native/student.c re-implements the features, normalisation, MLP and softmax: on 2,000
    random states its probabilities equal the numpy path's (float32 sums in another order)."""
    native = StudentPolicy()
    assert native.native is not None, "no C compiler? setup installs clang"
    numpy_path = StudentPolicy(StudentPolicy.Params(native=False))
    rng = random.Random(7)
    for _ in range(2000):
        state = _random_state(rng)
        got = native.native.probs(state)
        logits = numpy_path.student.logits(numpy_path.student.state_input(state))
        want = [_softmax(r) for r in logits.tolist()]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)
        a, b = native.update(state), numpy_path.update(state)
        for cls in ("l4s", "classic"):
            np.testing.assert_allclose([a.of(cls).p_drop, a.of(cls).p_mark],
                                       [b.of(cls).p_drop, b.of(cls).p_mark], rtol=1e-4, atol=1e-9)


def test_without_a_compiler_the_student_stays_in_numpy(monkeypatch, tmp_path):
    from policies.aqm_llm import student_native

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(student_native.shutil, "which", lambda name: None)
    policy = StudentPolicy()
    assert policy.native is None
    assert 0.0 <= policy.update(_random_state(random.Random(1))).classic.p_drop <= 1.0


def test_no_teacher_student_learns_the_pools_own_decisions(tmp_path):
    """The no-LLM ablation: with every recorded decision set to classic drop 0.3 and L4S mark
    0.6, the MLP fitted to the pool decides about that on the pool's states."""
    from policies.aqm_llm.distill import clone_pool

    frame = D.synthetic_pool(("dualpi2",), seconds=3.0)
    frame = frame.assign(classic_p_drop=0.3, classic_p_mark=0.0, l4s_p_drop=0.0, l4s_p_mark=0.6)
    out = run_cli("distill", "--no-teacher", "--pool", str(_write(frame, tmp_path)), "--out",
                  str(tmp_path / "bc"), "--steps", "400", "--hidden", "16")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["teacher"].startswith("none")
    policy = StudentPolicy(StudentPolicy.Params(checkpoint=str(tmp_path / "bc")))
    decisions = [policy.update(s) for _, rows in D.episodes(frame) for s in list(D.states(rows))[::20]]
    assert abs(np.mean([d.classic.p_drop for d in decisions]) - 0.3) < 0.05
    assert abs(np.mean([d.l4s.p_mark for d in decisions]) - 0.6) < 0.05
    clone = clone_pool(frame, tmp_path / "bc2", steps=50, hidden=(8,))
    assert clone["states"] == len(frame)


def test_no_teacher_takes_no_checkpoint(tmp_path):
    res = run_cli("distill", "--no-teacher", "--checkpoint", str(tmp_path), "--pool", str(tmp_path),
                  "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "no checkpoint" in res.stderr and "Traceback" not in res.stderr


def _write(frame: pd.DataFrame, tmp_path) -> object:
    path = tmp_path / "pool.parquet"
    frame.to_parquet(path, index=False)
    return path


def _spread_labels(n: int = 3000, seed: int = 0) -> dict[str, np.ndarray]:
    """States x and per-class labels whose signal probability spans 1e-6 .. 0.3 as a smooth
    function of x (log10 p linear in two inputs), so an MLP can learn it exactly in log space."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    log_p = np.stack([np.clip(-3.5 + 1.2 * x[:, 0], -6, -0.5), np.clip(-3.0 + 1.2 * x[:, 1], -6, -0.5)], 1)
    p = np.zeros((n, 2, 3), np.float32)
    p[..., 2] = 10.0 ** log_p  # mark
    p[..., 0] = 1 - p[..., 2]
    return {"x": x, "p": p, "episode": np.arange(n) // 100}


def test_the_log_term_teaches_small_probabilities_the_cross_entropy_misses():
    """Issue 14 item 7 for the student: with the cross-entropy alone, a tenfold error at 1e-5
    costs next to nothing, so held-out log errors stay large; the log term shrinks them."""
    labels = _spread_labels()
    errs = {}
    for w in (0.0, 1.0):
        _, metrics = fit_student(labels, hidden=(32, 32), steps=600, seed=0, log_weight=w)
        errs[w] = max(metrics["val_log10_err_l4s"], metrics["val_log10_err_classic"])
    print(f"\nmedian |log10 error|, held out: cross-entropy {errs[0.0]:.3f}, with the log term "
          f"{errs[1.0]:.3f}")
    assert errs[1.0] < 0.5 * errs[0.0] and errs[1.0] < 0.15


def test_the_log_term_reads_tiny_signals_from_the_logits():
    """1e-7 of signal survives in the student's log term (1 - p_enqueue in float32 would be 0)."""
    from policies.aqm_llm.distill import signal_log_loss

    logits = torch.tensor([[[0.0, -30.0, math.log(1e-7)]]])  # signal 1e-7 (+ e^-30)
    label = torch.tensor([[[1 - 1e-7, 0.0, 1e-7]]])
    assert float(signal_log_loss(logits, label)) < 1e-6
    far = torch.tensor([[[1 - 1e-3, 0.0, 1e-3]]])  # 4 decades off: Huber 1 * (4 - 0.5)
    assert float(signal_log_loss(logits, far)) == pytest.approx(3.5, abs=1e-3)


def test_the_no_llm_ablation_can_leave_explored_rows_out(tmp_path):
    from policies.aqm_llm.distill import clone_pool

    frame = D.synthetic_pool(("dualpi2",), seconds=3.0)
    explore = (np.arange(len(frame)) % 4 == 0).astype(float)
    frame = frame.assign(explore=explore)
    kept = clone_pool(frame, tmp_path / "a", steps=20, hidden=(8,), learn_explored=False)
    assert kept["states"] == len(frame) - int(explore.sum())
