"""Every way a user can hand AQM-LLM a bad model, backbone, config or parameter ends in one line
naming the file or key and a non-zero exit, never a traceback: tested through the real CLI."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from click.testing import CliRunner

from orchestrator.cli import cli
from policies.aqm_llm import dataset as D
from policies.aqm_llm.checkpoint import save_checkpoint
from policies.aqm_llm.model import AqmLlm, ModelConfig

from conftest import ROOT, dumbbell_yaml, needs_root, one_clear_line, run_cli, unique_name

torch.set_num_threads(1)




@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.parquet"
    D.synthetic_pool(behaviours=("dualpi2",), seconds=1.0).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, pool_file):
    """A real (tiny-backbone) checkpoint to break in different ways."""
    import pandas as pd

    stats = D.prepare(pd.read_parquet(pool_file), gamma=0.98)[2]
    out = tmp_path_factory.mktemp("ck") / "tiny"
    save_checkpoint(AqmLlm(ModelConfig(backbone="tiny", window=4, lora_rank=4)), stats, out)
    return out


def broken_copy(src, dst, **changes):
    shutil.copytree(src, dst)
    for name, content in changes.items():
        path = dst / name.replace("__", ".")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return dst


# ---- testbed train --config


@pytest.mark.parametrize("text, needles", [
    ("stpes: 3\n", ["bad.yaml: stpes: unknown key"]),
    ("steps: many\n", ["bad.yaml: steps:"]),
    ("steps: 0\n", ["bad.yaml: steps:", "greater than or equal to 1"]),
    ("- steps\n", ["bad.yaml: expected a mapping"]),
    ("steps: [1\n", ["bad.yaml: line 2: not valid YAML"]),
    ("steps: 3\n", ["train needs a pool and an out directory"]),
    ("pool: /nonexistent/pool.parquet\nout: x\n", ["pool /nonexistent/pool.parquet: no such file"]),
])
def test_a_bad_train_config_is_one_line(tmp_path, text, needles):
    (tmp_path / "bad.yaml").write_text(text)
    one_clear_line(run_cli("train", "--config", str(tmp_path / "bad.yaml")), *needles)


def test_a_missing_train_config_is_one_line(tmp_path):
    one_clear_line(run_cli("train", "--config", str(tmp_path / "none.yaml")), "none.yaml", "file not found")


def test_options_override_the_config_file(tmp_path, pool_file):
    (tmp_path / "train.yaml").write_text(
        f"pool: {pool_file}\nout: {tmp_path / 'ck'}\nexport: {tmp_path / 'shipped'}\nbackbone: tiny\n"
        "steps: 50\nbatch: 4\nwindow: 4\nlora_rank: 4\nthreads: 1\nval_every: 1000\n"
        "deploy: {early_exit_layers: 2}\nexits: 2\n")
    out = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "train.yaml"), "--steps", "2"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output[out.output.index("{"):])
    assert summary["steps"] == 2  # the option, not the file's 50
    shipped = json.loads((tmp_path / "shipped" / "config.json").read_text())
    assert shipped["deploy"] == {"early_exit_layers": 2} and shipped["recipe"]["steps"] == 2
    assert shipped["model"]["window"] == 4 and shipped["model"]["exits"] == [2]  # from the file
    assert not (tmp_path / "shipped" / "optimizer.safetensors").exists()
    assert (tmp_path / "shipped" / "adapter_model.safetensors").is_file()


def test_a_bad_distill_config_is_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("hiden: [8]\n")
    one_clear_line(run_cli("distill", "--config", str(tmp_path / "bad.yaml")), "bad.yaml: hiden: unknown key")


# ---- testbed run --policy aqm-llm / aqm-llm-student on a testbed that is up


@pytest.fixture(scope="module")
def testbed_up(tmp_path_factory):
    name = unique_name("mle")
    path = tmp_path_factory.mktemp("tb") / "tb.yaml"
    path.write_text(dumbbell_yaml(name, scenario="scenario:\n  duration: 2s\n  flows:\n"
                                              "    - {name: c, kind: tcp, src: s1, dst: rx}\n"))
    run_cli("up", str(path), check=True)
    yield name
    run_cli("down", name)


def bad_checkpoints(tiny, tmp):
    """(policy spec, what the one line must say) for each kind of bad model."""
    (tmp / "model.pt").write_bytes(pickle.dumps({"w": [1.0]}))
    pickled_dir = broken_copy(tiny, tmp / "pickled")
    (pickled_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [1.0]}))
    config = json.loads((tiny / "config.json").read_text())
    no_model = json.dumps({"format": "aqm-llm/1"})
    old_format = json.dumps({**config, "format": "x/0"})
    no_backbone = broken_copy(tiny, tmp / "nobackbone", config__json=json.dumps(
        {**config, "model": {**config["model"], "backbone": str(tmp / "no-such-backbone")}}))
    student = tmp / "student"
    student.mkdir()
    (student / "student.safetensors").write_bytes(b"\x00" * 16)
    (student / "student.json").write_text('{"format": "something-else"}')
    return [
        ("aqm-llm:checkpoint=/nonexistent", ["checkpoint /nonexistent: no such directory"]),
        (f"aqm-llm:checkpoint={tmp / 'model.pt'}", ["model.pt: a file; expected a checkpoint directory"]),
        (f"aqm-llm:checkpoint={pickled_dir}", ["refusing", "pytorch_model.bin"]),
        (f"aqm-llm:checkpoint={broken_copy(tiny, tmp / 'badjson', config__json='{not json')}",
         ["config.json is not readable JSON"]),
        (f"aqm-llm:checkpoint={broken_copy(tiny, tmp / 'wrongjson', config__json='[1, 2]')}",
         ["config.json: expected a JSON object"]),
        (f"aqm-llm:checkpoint={broken_copy(tiny, tmp / 'nomodel', config__json=no_model)}",
         ["config.json key 'model'"]),
        (f"aqm-llm:checkpoint={broken_copy(tiny, tmp / 'oldformat', config__json=old_format)}",
         ["config.json key 'format'"]),
        (f"aqm-llm:checkpoint={broken_copy(tiny, tmp / 'badweights', encoder__safetensors=b'PK')}",
         ["encoder.safetensors: not a valid safetensors file"]),
        (f"aqm-llm:checkpoint={broken_copy(tiny, tmp / 'badstats', stats__json='{}')}", ["bad stats.json"]),
        (f"aqm-llm:checkpoint={no_backbone}", ["no-such-backbone", "no such directory"]),
        (f"aqm-llm:checkpoint={tiny},precision=fp7", ["parameter 'precision'"]),
        (f"aqm-llm:checkpoint={tiny},bogus=1", ["unknown parameter 'bogus'"]),
        (f"aqm-llm:checkpoint={tiny},early_exit_layers=3", ["early exit after 3 layers"]),
        ("aqm-llm:backbone=/no/such/model", ["/no/such/model", "no such directory"]),
        (f"aqm-llm-student:checkpoint={student}", ["student.json key 'format'"]),
        ("aqm-llm-student:checkpoint=/nonexistent", ["student /nonexistent: no student.safetensors"]),
    ]


@needs_root
@pytest.mark.slow  # 16 CLI runs, each importing torch: a minute or more on a shared machine
def test_a_bad_model_or_parameter_is_one_line_on_a_testbed_that_is_up(testbed_up, tiny_checkpoint, tmp_path):
    results = tmp_path / "results"
    for spec, needles in bad_checkpoints(tiny_checkpoint, tmp_path):
        res = run_cli("run", "--testbed", testbed_up, "--policy", spec, "--duration", "2",
                      "--results", str(results))
        one_clear_line(res, "error:", *needles)
    assert not results.exists() or not any(results.iterdir())  # nothing started


def test_the_shipped_models_are_safetensors_and_json_only():
    for folder in ("models/aqm-llm", "models/aqm-llm-student", "models/aqm-llm-coupled",
                   "models/aqm-llm-coupled-student", "models/aqm-llm-random"):
        files = sorted(p.name for p in (ROOT / folder).iterdir())
        assert files, folder
        for name in files:
            assert name.endswith((".safetensors", ".json", ".yaml", ".md", ".parquet")), name
