"""Every shipped config and ablation file builds a valid tiny run; ``bench ablate``; the frozen Q-Former."""

from __future__ import annotations

import json
from importlib import resources

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from benchmark.ablate import arm_config, canonical, discover, get
from benchmark.cli import app
from benchmark.config import ConfigError, build_run_config, from_dict, model_defaults
from benchmark.registry import MODELS
from datamodules.batch import collate_train
from lightning_modules.idq_former import IdqConfig, IdqFormerRetrieval
from lightning_modules.optim import OptimConfig
from tests.test_run_costs import TEXTS, blip2_dir  # noqa: F401 - the tiny BLIP2 checkpoint fixture

runner = CliRunner()
MODEL_CONFIGS = sorted(
    p.name[:-5] for p in (resources.files("benchmark") / "configs" / "models").iterdir() if p.name.endswith(".json")
)
ARMS = [(a.name, arm.name) for a in discover().values() for arm in a.arms]


@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_every_shipped_model_config_is_a_valid_tiny_run(model):
    cfg = build_run_config(model_defaults(model))
    assert cfg.model == model and cfg.size == "tiny" and model in MODELS
    from_dict(MODELS.get(model).Config, cfg.model_args, "model_args")  # the model's own validation


def test_the_shipped_ablations_are_discovered():
    found = discover()
    assert {"qscaler", "qformer", "attention"} <= set(found)
    assert [a.name for a in found["qscaler"].arms] == ["with", "without"]
    assert [a.name for a in found["qformer"].arms] == ["trainable", "frozen"]


@pytest.mark.parametrize(("ablation", "arm"), ARMS)
def test_every_ablation_arm_is_a_valid_tiny_run(ablation, arm):
    a = get(ablation)
    the_arm = next(x for x in a.arms if x.name == arm)
    cfg = arm_config(a, the_arm, {"tag": a.tag(the_arm)})
    assert cfg.model == a.model and cfg.tag == f"ablate-{ablation}-{arm}" and cfg.size == "tiny"
    resolved = from_dict(MODELS.get(a.model).Config, cfg.model_args, "model_args")
    for field, value in the_arm.overrides.get("model_args", {}).items():
        assert getattr(resolved, field) == value, (field, value)
    # the arms of one ablation differ in their model only, never in data or training settings
    base = build_run_config(model_defaults(a.model))
    assert (cfg.data, cfg.train, cfg.eval, cfg.seed) == (base.data, base.train, base.eval, base.seed)


def test_an_arm_that_states_the_default_is_the_plain_run():
    plain = build_run_config(model_defaults("ours"))
    qscaler = get("qscaler")
    with_, without = (arm_config(qscaler, arm) for arm in qscaler.arms)
    assert with_.training_hash() == plain.training_hash() == canonical(plain).training_hash()
    assert without.training_hash() != plain.training_hash()
    assert without.model_args == canonical(plain).model_args | {"qscaler": False}


def test_user_overrides_apply_on_top_of_the_arm():
    qformer = get("qformer")
    frozen = next(a for a in qformer.arms if a.name == "frozen")
    cfg = arm_config(qformer, frozen, {"train": {"max_epochs": 1}}, {"model_args": {"l_max": 40}})
    base = canonical(build_run_config(model_defaults("ours"))).model_args
    assert cfg.train.max_epochs == 1 and cfg.model_args == base | {"freeze_qformer": True, "l_max": 40}
    with pytest.raises(ConfigError, match="model_args"):
        arm_config(qformer, frozen, {"model_args": {"no_such_field": 1}})


def test_inconsistent_ablation_folders_are_refused(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "_ablation.json").write_text(json.dumps({"model": "ours", "description": "d", "arms": ["a", "b"]}))
    (folder / "a.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"_ablation\.json.*must name the arm files"):
        discover(tmp_path)
    (folder / "b.json").write_text("[1]")
    with pytest.raises(ConfigError, match=r"b\.json: an arm's overrides must be a JSON object"):
        discover(tmp_path)
    (folder / "b.json").write_text('{"model_args": {"qscaler": false}}')
    assert [a.name for a in discover(tmp_path)["demo"].arms] == ["a", "b"]


def test_unknown_ablation_exits_2_listing_the_valid_ones(tmp_path):
    res = runner.invoke(app, ["ablate", "qscalr", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "unknown ablation 'qscalr'" in res.output and "qscaler" in res.output
    res = runner.invoke(
        app, ["ablate", "qscaler", "--set", "model_args.attention=sideways", "--results-dir", str(tmp_path)]
    )
    assert res.exit_code == 2 and "model_args.attention" in res.output
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_qformer_is_not_trained(blip2_dir, freeze):  # noqa: F811 - fixture
    torch.manual_seed(0)
    m = IdqFormerRetrieval.create(
        IdqConfig(
            blip2_checkpoint=str(blip2_dir),
            l_base=2,
            l_max=12,
            l_init=8,
            cache_features=False,
            freeze_qformer=freeze,
            qscaler_encoder="qformer",
        ),
        OptimConfig(lr=1e-2),
    )
    head, bank = {k: v.clone() for k, v in m.head.state_dict().items()}, m.bank.tokens.detach().clone()
    tokens = torch.randn(8, 5, 32, generator=torch.Generator().manual_seed(0))  # frozen vision tokens
    data = [(i, tokens[i], TEXTS[i % len(TEXTS)]) for i in range(8)]
    L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(m, DataLoader(data, batch_size=4, collate_fn=collate_train))
    changed = {k for k, v in m.head.state_dict().items() if not torch.equal(v, head[k])}
    qformer = {k for k in head if k.startswith(("qformer.", "embeddings."))}
    assert not torch.equal(m.bank.tokens, bank) and "vision_projection.weight" in changed
    assert (changed & qformer == set()) if freeze else len(changed & qformer) > 10


@pytest.mark.slow
def test_bench_ablate_runs_every_arm_and_prints_the_table(tmp_path):
    """``bench ablate qformer`` end to end on a small SynthScenes (CLIP -> BLIP2 -> both arms of ours)."""
    from tests.test_blip2 import BLIP2_ARGS, SMALL, TINY_QFORMER

    deps = {"blip2_checkpoint": {"train": {"max_epochs": 1}, "model_args": BLIP2_ARGS}}
    ours = TINY_QFORMER | {
        "l_base": 2,
        "l_max": 12,
        "l_init": 8,
        "qscaler_hidden": 16,
        "itm_max_anchors": 8,
        "dependency_overrides": deps,
    }
    res = runner.invoke(
        app,
        [
            "ablate",
            "qformer",
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
            "data.batch_size=32",
            "--set",
            f"model_args={json.dumps(ours)}",
        ],
    )
    assert res.exit_code == 0, res.output
    runs = {
        arm: json.loads((tmp_path / "results" / f"ours__synthetic__ablate-qformer-{arm}.json").read_text())
        for arm in ("trainable", "frozen")
    }
    assert [r["model_config"]["freeze_qformer"] for r in runs.values()] == [False, True]
    for r in runs.values():
        assert {"t2i/Sim", "t2i/R@5", "t2i/MRR", "qlen/mean", "gflops/total", "throughput_img_s"} <= set(r["metrics"])
    table = res.output[res.output.index("Arm ") :]
    assert "trainable" in table and "frozen" in table and "GFLOPs" in table and "Q-Len" in table
    # the frozen arm's Q-Former is the BLIP2 checkpoint's, unchanged
    from safetensors.torch import load_file

    from benchmark.portable import resolve

    roots = {"cache": tmp_path / "cache"}  # recorded paths are relative to the cache (benchmark.portable)
    ckpt = {arm: resolve(r["provenance"]["checkpoint"], roots) for arm, r in runs.items()}
    base = load_file(
        resolve(runs["frozen"]["model_config"]["blip2_checkpoint"], roots) / "qformer_head/qformer_head.safetensors"
    )
    for arm, path in ckpt.items():
        head = load_file(f"{path}/qformer_head/qformer_head.safetensors")
        same = all(torch.equal(head[k], base[k]) for k in head if k.startswith("qformer."))
        assert same == (arm == "frozen"), arm
