"""The "add a model" guide, tested: a minimal model (tests/example_model.py), registered here,
runs end to end through ``bench run`` at tiny size (train, cache, load, evaluate, record)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.portable import resolve
from benchmark.registry import MODELS
from lightning_modules.contract import (
    CostModel,
    ItemExtra,
    ItemLoading,
    MethodSettings,
    ScoreVariants,
    SuiteModel,
    VqaPrefix,
    check_model_class,
)
from lightning_modules.optim import OptimConfig
from tests.example_model import ExampleConfig, MeanPoolRetrieval

runner = CliRunner()
SMALL = '{"n_train": 64, "n_val": 16, "n_test": 24}'


@pytest.fixture
def example_registered():
    MODELS.register("example", "tests.example_model:MeanPoolRetrieval", "a mean-pooled dual encoder (test)")
    yield "example"
    MODELS.unregister("example")


def _run(tmp_path, *extra: str):
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "example",
            "--epochs",
            "1",
            "--no-progress",
            "--results-dir",
            str(tmp_path / "results"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--set",
            f"data.options={SMALL}",
            "--set",
            "data.batch_size=16",
            "--set",
            'model_args={"image_size": 32, "patch": 16, "embed_dim": 16}',
            *extra,
        ],
    )
    assert res.exit_code == 0, res.output
    return res


def test_the_example_honours_the_contract_and_declares_no_capability():
    assert check_model_class(MeanPoolRetrieval, "example") is MeanPoolRetrieval
    model = MeanPoolRetrieval.create(ExampleConfig(), OptimConfig(), ["a red circle", "a blue square"])
    assert isinstance(model, SuiteModel)
    for capability in (ScoreVariants, ItemLoading, ItemExtra, CostModel, VqaPrefix, MethodSettings):
        assert not isinstance(model, capability)
    with pytest.raises(ValueError, match="model_args.patch=5 must divide"):
        ExampleConfig(patch=5)
    with pytest.raises(ValueError, match="model_args.embed_dim must be an integer"):
        ExampleConfig(embed_dim=0)


def test_a_class_without_a_contract_member_is_refused_by_name():
    class NoScore(MeanPoolRetrieval):
        score = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"model 'broken' .* missing score"):
        check_model_class(NoScore, "broken")


def test_the_registered_example_runs_through_bench_run(tmp_path, example_registered):
    _run(tmp_path)
    text = (tmp_path / "results" / "example__synthetic__default.json").read_text()
    assert str(tmp_path) not in text  # no machine path in a result file: <cache>/..., <data>/..., <results>/...
    first = json.loads(text)
    assert first["model"] == "example" and first["provenance"]["trained_this_run"] is True
    assert first["model_config"] == {"image_size": 32, "patch": 16, "embed_dim": 16}
    for d in ("t2i", "i2t"):
        for m in ("R@1", "R@5", "R@10", "MRR"):
            assert 0.0 <= first["metrics"][f"{d}/{m}"] <= 1.0
    assert first["metrics"]["t2i/n_queries"] == 24 * 5
    assert "gflops/total" not in first["metrics"]  # no cost_components: FLOPs are not measured
    ckpt = first["provenance"]["checkpoint"]
    checkpoints = (tmp_path / "cache" / "checkpoints").iterdir()  # hidden: the save lock beside each checkpoint
    assert sorted(p.name for p in checkpoints if not p.name.startswith(".")) == [ckpt.rsplit("/", 1)[-1]]
    _run(tmp_path, "--tag", "again")  # the cached checkpoint is loaded (load_checkpoint), not trained again
    again = json.loads((tmp_path / "results" / "example__synthetic__again.json").read_text())
    retrieval = {k for k in first["metrics"] if k.split("/")[0] in ("t2i", "i2t")}  # cost figures are timings
    assert again["provenance"]["trained_this_run"] is False
    assert {k: again["metrics"][k] for k in retrieval} == {k: first["metrics"][k] for k in retrieval}
    assert first["metrics"]["memory_mb"] > 0  # measured in a fresh process that imports the class by path
    loaded = MeanPoolRetrieval.load_checkpoint(resolve(ckpt, {"cache": tmp_path / "cache"}))
    torch.testing.assert_close(loaded.encode_texts(["a red circle"]).emb.norm(dim=-1), torch.ones(1))


def test_every_registered_model_honours_the_contract_and_declares_its_capabilities():
    declared = {
        name: {
            c.__name__ for c in (VqaPrefix, MethodSettings, CostModel, ItemLoading) if issubclass(MODELS.get(name), c)
        }
        for name in MODELS.names()
    }
    assert declared == {
        "clip": {"CostModel"},
        "blip2": {"VqaPrefix", "CostModel", "ItemLoading"},
        "ours": {"VqaPrefix", "CostModel", "ItemLoading"},
        "dynamicvit": {"VqaPrefix", "MethodSettings", "CostModel", "ItemLoading"},
        "crossget": {"VqaPrefix", "MethodSettings", "CostModel", "ItemLoading"},
    }
