"""Issue 14, item 1: the coupled action head in log space. Each check compares with an
independent computation (DualPI2's own decision code, hand arithmetic), never with the code's
own tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import policies
from policies.aqm_llm import coupled
from policies.aqm_llm import dataset as D
from policies.aqm_llm.checkpoint import load_checkpoint, save_checkpoint
from policies.aqm_llm.model import AqmLlm, ModelConfig
from policies.aqm_llm.train import train
from policies.base import ClassState, QueueState

torch.set_num_threads(1)
TINY = {"backbone": "tiny", "window": 4, "lora_rank": 4}


def test_coupled_probabilities_are_dualpi2s_for_the_same_base_probability() -> None:
    p_base = torch.tensor([0.0, 1e-4, 6e-3, 0.1, 0.45, 0.7], dtype=torch.float64)
    got = coupled.coupled_probs(p_base, torch.full_like(p_base, 2.0))
    for i, p in enumerate(p_base.tolist()):
        ref = policies.make("dualpi2", {"arithmetic": "float"})
        ref.prob = p
        want = ref.decision()  # DualPI2's own reading of p' (incl. overload above 1/k)
        for c, cls in enumerate(("l4s", "classic")):
            d = want.of(cls)
            assert got[i, c, 1].item() == pytest.approx(d.p_drop, abs=1e-12)
            assert got[i, c, 2].item() == pytest.approx(d.p_mark, abs=1e-12)
    # by hand: p' = 6e-3 -> p_C = 3.6e-5 (two Reno flows at 100 Mbit/s, 50 ms), p_L = 1.2e-2
    assert got[2, 1, 2].item() == pytest.approx(3.6e-5) and got[2, 0, 2].item() == pytest.approx(1.2e-2)


def test_labels_recover_the_base_probability_dualpi2_ran() -> None:
    """Kernel arithmetic: the coin is (p+1)/2^32, so p_C is never exactly 0; p' below 1e-8
    is the gate's zero."""
    ref = policies.make("dualpi2", {})
    rows, truth = [], []
    for soj in [0.0] * 20 + list(np.linspace(5, 60, 40)) + [0.0] * 400:
        s = QueueState(t=0.0, dt=0.016, link_rate_bps=1e8, l4s=ClassState(head_sojourn_ms=soj),
                       classic=ClassState(head_sojourn_ms=soj))
        rows.append(ref.update(s).flat())
        truth.append(ref.prob_u32 / 2 ** 32)
    acts = torch.from_numpy(D.action_targets(pd.DataFrame(rows).assign(episode="x-dualpi2-0")))
    lab = coupled.labels(acts)
    truth = np.asarray(truth)
    pos = truth > 1e-6
    assert pos.sum() > 10 and (~pos).sum() > 10
    assert np.all(lab["gate"].numpy()[pos] == 1) and np.all(lab["gate"].numpy()[truth == 0] == 0)
    got = 10 ** lab["log_p"].numpy()[pos]
    assert np.allclose(got, truth[pos], rtol=1e-3)
    assert np.allclose(10 ** lab["log_k"].numpy()[pos], 2.0, rtol=1e-3)
    assert np.all(lab["coupled"].numpy()[pos] == 1)


def _fit(action: str, steps: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Fit only the head of a tiny model on fixed hidden states whose DualPI2 label p' spans
    1e-3 .. 1e-1 (p_C 1e-6 .. 1e-2); returns (model p_C, label p_C) on held-out states."""
    torch.manual_seed(0)
    model = AqmLlm(ModelConfig(**TINY, action=action))
    width = model.decoder.config.hidden_size
    gen = torch.Generator().manual_seed(1)
    direction = torch.randn(width, generator=gen)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.rand(n, generator=gen) * 2 - 1  # log10 p' = -2 + z
        hidden = torch.randn(n, width, generator=gen) * 0.1 + z[:, None] * direction
        p = 10.0 ** (-2 + z)
        acts = torch.stack([torch.stack([1 - 2 * p, 0 * p, 2 * p], -1),
                            torch.stack([1 - p * p, 0 * p, p * p], -1)], -2)
        return hidden, acts

    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    for _ in range(steps):
        h, a = batch(64)
        loss = model.action_loss(model.head(h), a, torch.ones(64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    h, a = batch(256)
    with torch.no_grad():
        p = model.probs(model.head(h))
    return coupled.signal(p)[:, 1].numpy(), coupled.signal(a)[:, 1].numpy()


def test_the_coupled_head_learns_small_probabilities_in_log_space() -> None:
    """The issue's acceptance example at head level: the classic probability within a factor
    of 2 of DualPI2's (median |log10| < 0.3) over four decades, and in the lowest decade
    (p_C < 1e-5), where the softmax head's linear-scale cross-entropy does not look."""
    def errors(action: str) -> tuple[np.ndarray, np.ndarray]:
        model_p, label_p = _fit(action)
        err = np.abs(np.log10(np.maximum(model_p, 1e-12)) - np.log10(label_p))
        return err, err[label_p < 1e-5]

    err, low = errors("coupled")
    assert np.median(err) < 0.3 and np.percentile(err, 90) < 0.5 and np.median(low) < 0.3
    assert np.median(errors("softmax")[1]) > 0.3


def test_coupled_checkpoint_records_the_head_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    model = AqmLlm(ModelConfig(**TINY, action="coupled")).eval()
    stats = D.prepare(D.synthetic_pool(("dualpi2",), seconds=1.0), gamma=0.98)[2]
    save_checkpoint(model, stats, tmp_path / "c")
    assert json.loads((tmp_path / "c" / "config.json").read_text())["model"]["action"] == "coupled"
    loaded, _, _ = load_checkpoint(tmp_path / "c")
    h = torch.randn(3, model.decoder.config.hidden_size)
    with torch.no_grad():
        assert torch.equal(model.probs(model.head(h)), loaded.probs(loaded.head(h)))
    # a config written before the key existed (the shipped model's) is the softmax head
    assert ModelConfig.from_dict({"backbone": "tiny"}).action == "softmax"


# ---------------------------------------------------------------- item 7: validation
def test_log_errors_by_hand() -> None:
    def dist(p_l: float, p_c: float) -> list[list[float]]:
        return [[1 - p_l, 0.0, p_l], [1 - p_c, p_c, 0.0]]

    pred = torch.tensor([dist(0.02, 2e-5), dist(0.0, 0.0), dist(0.5, 0.5)], dtype=torch.float64)
    label = torch.tensor([dist(0.01, 1e-5), dist(1e-3, 1e-4), dist(0.0, 0.0)], dtype=torch.float64)
    got = coupled.log_errors(pred, label, torch.ones(3))
    # log10 2 = 0.30103; a 0 against 1e-4 is floored at 1e-8: 4 decades; label 0 is not scored
    assert got["classic"] == pytest.approx([math.log10(2), 4.0])
    assert got["l4s"] == pytest.approx([math.log10(2), 5.0])


def test_validation_holds_out_every_behaviour_and_reports_each(tmp_path) -> None:
    pool = D.synthetic_pool(("dualpi2", "pie"), seconds=1.0)  # 3 episodes per behaviour
    _, val = D.split(pool, val_frac=0.2, seed=0)
    assert {D.behaviour(e) for e in set(val["episode"])} == {"dualpi2", "pie"}
    result = train(pool, tmp_path / "t", steps=1, batch=4, val_every=1, ckpt_every=1, progress=False,
                   action="coupled", **TINY)
    by = result["val_by_behaviour"]
    assert set(by) == {"dualpi2", "pie"}
    for v in by.values():
        assert v["steps"] > 0 and math.isfinite(v["ce"]) and math.isfinite(v["log10_err_l4s"])


def test_distillation_reports_the_error_in_log_space() -> None:
    """A student that learns nothing (zero weights: softmax of 0 = 1/3 each) against a teacher
    that marks 1e-3 of L4S and 1e-5 of classic packets: 2.52 and 4.52 decades off."""
    from policies.aqm_llm.distill import _metrics

    mlp = torch.nn.Sequential(torch.nn.Linear(2, 6))
    torch.nn.init.zeros_(mlp[0].weight)
    torch.nn.init.zeros_(mlp[0].bias)
    p = torch.tensor([[[1 - 1e-3, 0.0, 1e-3], [1 - 1e-5, 0.0, 1e-5]]] * 4)
    got = _metrics(mlp, torch.zeros(4, 2), p, np.array([False, False, True, True]))
    # signal = drop + mark = 2/3 for the student
    assert got["val_log10_err_l4s"] == pytest.approx(math.log10((2 / 3) / 1e-3), rel=1e-5)
    assert got["val_log10_err_classic"] == pytest.approx(math.log10((2 / 3) / 1e-5), rel=1e-5)
