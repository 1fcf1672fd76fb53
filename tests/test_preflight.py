"""The validation layer (benchmark/preflight.py) and the static checks of the config dataclasses:
Lightning's flags, finite numbers, writable folders (nothing created), checkpoint paths, a
corrupt cached checkpoint."""

from __future__ import annotations

import typing

import pytest

from benchmark.config import TRAIN_PRECISIONS, ConfigError, TrainConfig, build_run_config, from_dict
from benchmark.preflight import (
    check_pretrained,
    check_run,
    check_trainer_flags,
    check_writable_folder,
    create_model,
    load_cached_checkpoint,
)


def test_train_precisions_are_lightnings():
    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    assert set(TRAIN_PRECISIONS) == set(typing.get_args(_PRECISION_INPUT_STR)) | set(
        typing.get_args(_PRECISION_INPUT_STR_ALIAS)
    )


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("precision", "banana", "train.precision must be one of"),
        ("gradient_clip_val", float("nan"), "train.gradient_clip_val must be a finite number"),
        ("gradient_clip_val", float("inf"), "train.gradient_clip_val must be a finite number"),
        ("limit_train_batches", float("nan"), "train.limit_train_batches"),
    ],
)
def test_train_config_refuses_on_construction(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(
    "override,needle",
    [
        ({"train": {"optim": {"lr": float("nan")}}}, "train.optim.lr: expected a finite number"),
        ({"eval": {"memmap_min_mb": float("inf")}}, "eval.memmap_min_mb: expected a finite number"),
        ({"train": {"gradient_clip_val": 10**400}}, "train.gradient_clip_val: expected a finite number"),
        ({"seed": -1}, "seed must be an integer in"),
        ({"seed": 2**32}, "seed must be an integer in"),
    ],
)
def test_from_dict_refuses_non_finite_numbers_and_bad_seeds(override, needle):
    with pytest.raises(ConfigError, match=needle):
        build_run_config({"model": "clip"}, override)


def test_model_args_floats_are_finite_too():
    from benchmark.registry import MODELS

    with pytest.raises(ConfigError, match="model_args.temp_init: expected a finite number"):
        from_dict(MODELS.get("blip2").Config, {"temp_init": float("nan")}, "model_args")


def test_trainer_flags():
    check_trainer_flags("auto", "auto", 1)
    check_trainer_flags("cpu", "ddp", 2)
    with pytest.raises(ConfigError, match="train.strategy .* got 'bogus'"):
        check_trainer_flags("auto", "bogus", 1)
    with pytest.raises(ConfigError, match="train.accelerator must be one of"):
        check_trainer_flags("abacus", "auto", 1)


def test_writable_folder_probe_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "results"
    check_writable_folder(target, "results_dir")
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"results_dir .*file/sub: exists and is not a folder \(its ancestor"):
        check_writable_folder(tmp_path / "file" / "sub", "results_dir")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        check_writable_folder(tmp_path / "file", "results_dir")


def test_pretrained_paths_and_hub_ids(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from tests.hub_cache import cache_hub_config

    check_pretrained(None)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "config.json").write_text("{}")
    check_pretrained(str(saved))
    for bad in ("/nonexistent", "./missing", "a/b/c", "~/nothing-here-xyz"):
        with pytest.raises(ConfigError, match="model_args.pretrained"):
            check_pretrained(bad)
    with pytest.raises(ConfigError, match="has no config.json; expected a folder saved by save_pretrained"):
        check_pretrained(str(tmp_path / "saved" / ".."))  # a folder, but not a checkpoint
    with pytest.raises(ConfigError, match="not a folder"):
        check_pretrained(str(saved / "config.json"))
    # a hub id: read from the local Hugging Face cache only (nothing is downloaded at run time)
    hub = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    with pytest.raises(ConfigError, match=r"no hub checkpoint of that id in the Hugging Face cache.*hf download Org/m"):
        check_pretrained("Org/m")
    check_pretrained("Org/m", local_files_only=False)  # the model may download it: left to the loader
    cache_hub_config(hub, "Org/m", {})
    check_pretrained("Org/m")  # cached: accepted


def test_check_run_refuses_a_result_path_that_is_a_folder(tmp_path):
    cfg = build_run_config({"model": "clip"}, {"results_dir": str(tmp_path / "r"), "cache_dir": str(tmp_path / "c")})
    check_run(cfg)
    cfg.result_path().mkdir(parents=True)
    with pytest.raises(ConfigError, match="exists and is not a regular file"):
        check_run(cfg)


def test_truncated_checkpoint_names_the_folder_and_retrain(tmp_path):
    from lightning_modules.clip import ClipConfig, ClipRetrieval
    from lightning_modules.optim import OptimConfig

    model = ClipRetrieval.create(
        ClipConfig(
            image_size=32,
            patch_size=8,
            vision_width=32,
            vision_layers=1,
            text_width=32,
            text_layers=1,
            heads=2,
            embed_dim=16,
        ),
        OptimConfig(),
        ["a red circle", "a blue square"],
    )
    ckpt = tmp_path / "clip__synthetic__tiny__0123"
    model.save_checkpoint(ckpt)
    assert load_cached_checkpoint(ClipRetrieval, ckpt) is not None
    weights = next(ckpt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match=rf"cached checkpoint {ckpt} cannot be loaded .*--retrain"):
        load_cached_checkpoint(ClipRetrieval, ckpt)
    with pytest.raises(ConfigError, match=rf"--checkpoint {ckpt} cannot be loaded .*complete checkpoint folder"):
        load_cached_checkpoint(ClipRetrieval, ckpt, given=True)


def test_a_checkpoint_the_model_cannot_be_built_from_is_named_not_a_traceback(tmp_path):
    """``create_model``: weights of another architecture, a truncated file and an option the
    pretrained model cannot take come back as a ConfigError naming --pretrained and the cause;
    a tiny model's refused option as one naming it; anything else propagates."""
    from lightning_modules.blip2 import Blip2Config, Blip2Retrieval
    from lightning_modules.clip import ClipConfig, ClipRetrieval
    from lightning_modules.optim import OptimConfig
    from tests.test_blip2 import _hub_style_checkpoint

    blip2 = tmp_path / "blip2"
    _hub_style_checkpoint(blip2, None)
    assert create_model(Blip2Retrieval, Blip2Config(pretrained=str(blip2)), OptimConfig()) is not None
    with pytest.raises(ConfigError, match=r"--pretrained\) '.*blip2': a ClipRetrieval cannot be built from it \("):
        create_model(ClipRetrieval, ClipConfig(pretrained=str(blip2)), OptimConfig())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "blip-2", ')  # truncated
    with pytest.raises(ConfigError, match=r"'.*broken': a Blip2Retrieval cannot be built from it"):
        create_model(Blip2Retrieval, Blip2Config(pretrained=str(broken)), OptimConfig())

    class Refuses:
        @staticmethod
        def create(config, optim, vocab):
            raise config

    with pytest.raises(ConfigError, match=r"^model Refuses: model_args.width must be even$"):
        create_model(Refuses, ValueError("model_args.width must be even"), OptimConfig())
    with pytest.raises(ValueError, match="^bad shape$"):  # a ValueError naming no option: a bug
        create_model(Refuses, ValueError("bad shape"), OptimConfig())
    with pytest.raises(KeyError):  # not an input error: a bug, left as it is
        create_model(Refuses, KeyError("x"), OptimConfig())
