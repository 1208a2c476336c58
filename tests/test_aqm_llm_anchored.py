"""The anchored head (policies/aqm_llm/anchored.py, anchor.py): AQM-LLM as a bounded
correction to DualPI2's own p'. The anchor is checked against DualPI2's policy code run on the
same states (an independent implementation: policies/dualpi2.py), never against itself."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import policies
from policies.aqm_llm import anchor, anchored, features
from policies.aqm_llm import dataset as D
from policies.aqm_llm.model import AqmLlm, ModelConfig
from policies.aqm_llm.policy import AqmLlmParams, AqmLlmPolicy
from policies.aqm_llm.train import train

torch.set_num_threads(1)
TINY = {"backbone": "tiny", "window": 4, "lora_rank": 4}


@pytest.fixture(scope="module")
def pool():  # noqa: ANN201
    return D.synthetic_pool(("dualpi2", "pie"), seconds=2.0)


def _dualpi2_p(states: list) -> np.ndarray:
    """p' of DualPI2's own policy code (float arithmetic, Linux's defaults) over the states."""
    pi2 = policies.make("dualpi2", {"arithmetic": "float"})
    out = []
    for s in states:
        pi2.update(s)
        out.append(pi2.prob)
    return np.asarray(out)


def test_the_anchor_is_dualpi2s_p_offline_and_live(pool) -> None:
    """On DualPI2's 16 ms ticks the anchor is DualPI2's p' (same queue, same gains), whether
    replayed over a pool's rows or updated state by state as the live policy does."""
    _, rows = next(D.episodes(pool))
    assert np.allclose(rows["dt"], 0.016)
    states = list(D.states(rows))
    want = _dualpi2_p(states)
    assert (want > 1e-3).mean() > 0.3  # the episode signals: the comparison means something
    live = anchor.Anchor()
    got_live = np.asarray([live.update(s) for s in states])
    got_rows = anchor.series(rows)
    expect = np.log10(np.maximum(want, 1e-8))
    assert got_live == pytest.approx(expect, abs=1e-9)
    assert got_rows == pytest.approx(expect, abs=1e-9)


def test_a_slower_tick_integrates_the_same_error_per_second() -> None:
    # a 5 ms excess over the 15 ms target for 0.48 s: 30 ticks of 16 ms or 16 of 30 ms
    def run(dt: float, n: int) -> float:
        p = 0.0
        for _ in range(n):
            p = anchor.step(p, 0.020, 0.020, dt)
        return p

    by_hand = 0.16 * 0.005 * 30  # alpha (Hz) x error (s) per 16 ms tick, 30 ticks
    assert run(0.016, 30) == pytest.approx(by_hand)
    assert run(0.030, 16) == pytest.approx(by_hand)


def test_the_untrained_head_is_dualpi2_and_any_correction_is_bounded() -> None:
    head = anchored.AnchoredHead(8, span=0.3)
    anchor_log = torch.tensor([-8.0, -4.0, -2.0, -0.5])
    with torch.no_grad():
        head.proj.weight.zero_()
        probs = policies_probs(head(torch.zeros(4, 8), anchor_log))
        p = 10.0 ** anchor_log
        p[0] = 0.0
        # DualPI2 (RFC 9332): p_C = p'^2, p_L = min(1, 2 p')
        assert probs[:, 1, 1:].sum(-1) == pytest.approx(p ** 2, rel=1e-5)
        assert probs[:, 0, 1:].sum(-1) == pytest.approx(torch.clamp(2 * p, max=1.0), rel=1e-5)
        head.proj.bias.copy_(torch.tensor([50.0, 0.0]))  # the most the head can raise p'
        raised = policies_probs(head(torch.zeros(4, 8), anchor_log))[:, 1, 1:].sum(-1)
        assert raised[1:3] == pytest.approx((10 ** 0.3 * p[1:3]) ** 2, rel=1e-4)  # 2x p', 4x p_C
        head.proj.bias.copy_(torch.tensor([-50.0, 0.0]))  # the most it can lower p'
        lowered = policies_probs(head(torch.zeros(4, 8), anchor_log))[:, 1, 1:].sum(-1)
        assert lowered[1:] == pytest.approx((10 ** -0.3 * p[1:]) ** 2, rel=1e-4)
        assert raised[0] == 0.0  # an empty queue's anchor stays at 0


def policies_probs(out: torch.Tensor) -> torch.Tensor:
    from policies.aqm_llm import coupled

    return coupled.probs(out)


def _policy(model: AqmLlm, stats: features.NormStats) -> AqmLlmPolicy:
    return AqmLlmPolicy(AqmLlmParams(precision="float32", early_exit_layers=0), model=model.eval(),
                        stats=stats)


def test_an_anchored_policy_with_a_zero_correction_decides_as_dualpi2(pool) -> None:
    """End to end through the live policy (feature vector, anchor slot, head): a model whose
    correction is 0 applies DualPI2's probabilities state by state."""
    torch.manual_seed(0)
    stats = D.prepare(pool, gamma=0.98, names=features.ANCHORED_SCALAR_NAMES)[2]
    model = AqmLlm(ModelConfig(**TINY, action="anchored"))
    with torch.no_grad():
        model.head.proj.weight.zero_()
    policy = _policy(model, stats)
    _, rows = next(D.episodes(pool))
    states = list(D.states(rows))
    want = _dualpi2_p(states)
    decisions = [policy.update(s).classic for s in states]
    got = np.asarray([d.p_drop + d.p_mark for d in decisions])
    assert (want > 0.5).any()  # overload (k p' > 1) is on the way: C drops, ECN off
    assert got == pytest.approx(want ** 2, rel=1e-4, abs=1e-12)


def test_training_an_anchored_model_fits_the_anchored_features(tmp_path, pool) -> None:
    result = train(pool, tmp_path / "a", steps=2, batch=4, val_every=1, ckpt_every=1, progress=False,
                   action="anchored", **TINY)
    from policies.aqm_llm.checkpoint import load_checkpoint

    model, stats, _ = load_checkpoint(tmp_path / "a")
    assert model.cfg.action == "anchored" and stats.names[1] == features.ANCHOR_NAME
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < 5.0
    # the feature is the anchor: its mean over the pool is DualPI2's mean log10 p'
    logs = np.concatenate([anchor.series(r) for _, r in D.episodes(D.split(pool, 0.2, 0)[0])])
    assert stats.scalar_mean[1] == pytest.approx(logs.mean(), rel=1e-6)


# ---------------------------------------------------------------- advantage weights (value.py)
def test_advantage_weights_favour_the_steps_that_did_better_from_the_same_state() -> None:
    """Two kinds of step from one and the same state, returns +1 and -1: V is their mean (0),
    the advantages are +-1 (std 1), so with beta = 1 the weights are e and 1/e: a ratio of
    e^2 (by hand), whichever order the steps come in."""
    from policies.aqm_llm.value import advantage_weights

    n = 400
    feats = features.Features(np.zeros((n, features.N_SCALARS)), np.zeros((n, features.N_SERIES, 16)),
                              np.ones((n, features.N_SERIES, 16)))
    rtg = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    stats = features.NormStats([0.0] * features.N_SCALARS, [1.0] * features.N_SCALARS, [0.0] * 4,
                               [1.0] * 4, rtg_mean=0.0, rtg_std=1.0)
    w, info = advantage_weights(feats, rtg, stats, beta=1.0, seed=0)
    assert w[0::2] == pytest.approx(np.full(n // 2, math.e), rel=0.02)
    assert w[1::2] == pytest.approx(np.full(n // 2, 1 / math.e), rel=0.02)
    assert abs(info["value_r2"]) < 0.01  # nothing about the state explains the return
    capped, _ = advantage_weights(feats, rtg * 10, stats, beta=0.1, max_weight=20.0)
    assert capped.max() == pytest.approx(20.0)


def test_advantage_weights_reach_the_training_loss(pool) -> None:
    """The loss of a batch whose weights are 0 but on one step is that step's loss alone."""
    from accelerate import Accelerator

    from policies.aqm_llm.train import _Run

    train_eps, val_eps, stats = D.prepare(pool, gamma=0.98, names=features.ANCHORED_SCALAR_NAMES)
    torch.manual_seed(0)
    model = AqmLlm(ModelConfig(**TINY, action="anchored")).eval()
    run = _Run(Accelerator(cpu=True), model, None, stats, model.cfg, train_eps, val_eps, 4)
    signalled = np.flatnonzero((train_eps.anchor > -8) & (train_eps.actions[:, 1, 1:].sum(-1) > 0))
    row = int(signalled[len(signalled) // 2])  # a step the anchored loss scores
    starts = np.array([10, row - 2])
    train_eps.weight = np.zeros(len(train_eps), dtype=np.float32)
    train_eps.weight[row] = 3.0  # the third step of the second window
    with torch.no_grad():
        weighted, _ = run.loss(run.tensors(train_eps, starts))
        b = run.tensors(train_eps, starts)
        out = model(**b)
        one = torch.zeros_like(b["valid"])
        one[1, 2] = 1.0
        alone = torch.stack([model.action_loss(x, b["actions"], one) for x in out.values()]).mean()
    assert float(alone) > 0 and float(weighted) == pytest.approx(float(alone), rel=1e-5)


# ---------------------------------------------------------------- pipelined: re-anchoring
def test_reanchor_moves_the_correction_to_the_current_anchor_by_hand() -> None:
    from policies.aqm_llm.policy import reanchor

    # answer: p' = 0.02 on an anchor of 0.01 (c = +0.301), k = 2.5; anchor now 0.03 -> p' 0.06
    got = reanchor((0.02, 2.5), math.log10(0.01), math.log10(0.03))
    assert got[1] == pytest.approx([1 - 0.06 ** 2, 0.0, 0.06 ** 2])  # classic: p'^2
    assert got[0] == pytest.approx([1 - 0.15, 0.0, 0.15])  # L4S: k p'
    # overload (k p' > 1): L drops p_C, marks the rest; C drops
    assert reanchor((0.5, 2.5), math.log10(0.5), math.log10(0.6))[0] == pytest.approx([0.0, 0.36, 0.64])
    assert reanchor((0.02, 2.0), -8.0, math.log10(0.03))[1][2] == pytest.approx(0.03 ** 2)  # c unknown: 0
    assert reanchor((0.02, 2.0), -2.0, -8.0) == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]  # anchor 0: nothing


@pytest.mark.slow
def test_pipelined_a_zero_correction_is_dualpi2_on_the_same_tick(tmp_path, pool) -> None:
    """Through the worker process and the control loop: each tick applies the answer to the
    previous state, re-anchored, so a model whose correction is 0 is DualPI2 with no lag."""
    from orchestrator.bottleneck.control import ControlLoop
    from policies.aqm_llm.checkpoint import save_checkpoint

    stats = D.prepare(pool, gamma=0.98, names=features.ANCHORED_SCALAR_NAMES)[2]
    model = AqmLlm(ModelConfig(**TINY, action="anchored"))
    with torch.no_grad():
        model.head.proj.weight.zero_()
    save_checkpoint(model, stats, tmp_path / "m")
    policy = policies.make("aqm-llm", {"checkpoint": str(tmp_path / "m"), "precision": "float32"})
    loop = ControlLoop(policy, tupdate_s=0.016, log_dir=None, deadline_s=60.0)
    _, rows = next(D.episodes(pool))
    states = list(D.states(rows))[:40]
    got = []
    try:
        for s in states:
            d = loop.step(s, 0.0).classic
            got.append(d.p_drop + d.p_mark)
            time.sleep(0.05)  # a tick's worth of time for the worker
    finally:
        loop.close()
    assert loop.missed == 0
    want = _dualpi2_p(states)
    assert (want[1:] > 1e-3).sum() > 10
    assert got[0] == 0.0  # nothing computed yet
    assert np.asarray(got[1:]) == pytest.approx(want[1:] ** 2, rel=1e-4, abs=1e-12)


def test_learn_from_keeps_the_other_behaviours_out_of_the_targets(pool) -> None:
    from policies.errors import PolicyError

    train_eps = D.prepare(pool, gamma=0.98)[0]
    mask = D.learn_mask(train_eps, ["dualpi2"])
    for name, kind, s, e in zip(train_eps.names, train_eps.behaviours, train_eps.start, train_eps.end,
                                strict=True):
        assert (mask[s:e] == (1.0 if name.startswith("sim-dualpi2") else 0.0)).all(), kind
    assert 0 < mask.sum() < len(mask)
    with pytest.raises(PolicyError, match="learn_from: no training episode of behaviour 'codel'"):
        D.learn_mask(train_eps, ["codel"])


def test_a_student_of_an_anchored_teacher_feeds_its_anchor_in_c_and_numpy(pool) -> None:
    """The shipped student's weights relabelled as the anchored set: the C and numpy paths decide
    alike state by state (each runs its own anchor), and the anchor changes the decisions."""
    import dataclasses

    from policies.aqm_llm.student import Student, StudentPolicy

    shipped = StudentPolicy(StudentPolicy.Params(native=False)).student
    weights = {f"{k}{i}": a for i, (w, b) in enumerate(shipped.layers) for k, a in (("w", w), ("b", b))}

    def student(names: tuple[str, ...], native: bool) -> StudentPolicy:
        s = Student(weights, dataclasses.replace(shipped.stats, names=names))
        return StudentPolicy(StudentPolicy.Params(native=native), student=s)

    c_path = student(features.ANCHORED_SCALAR_NAMES, True)
    np_path = student(features.ANCHORED_SCALAR_NAMES, False)
    plain = student(features.SCALAR_NAMES, True)
    assert c_path.native is not None
    _, rows = next(D.episodes(pool))
    a, b, z = ([p.probabilities(s) for s in D.states(rows)] for p in (c_path, np_path, plain))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)
    assert not np.allclose(a, z, rtol=1e-3, atol=1e-6)
