"""The one builder of run configs from CLI flags (benchmark/run_flags.py): the precedence
defaults < --config file < flags given explicitly < --set, through the real commands (the runner
replaced by a recorder), and configs built without a file identical to the former builder's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.config import ConfigError, build_run_config, model_defaults
from benchmark.run_flags import CliConfig, flag_overrides

runner = CliRunner()


@pytest.fixture()
def recorded(monkeypatch):
    """``bench run`` records its RunConfig instead of running it."""
    import benchmark.runner as runner_module
    from benchmark.runner import RunOutcome

    configs = []

    def record(cfg, **_):
        configs.append(cfg)
        return RunOutcome(cfg.result_path(), None, skipped=True)

    monkeypatch.setattr(runner_module, "run", record)
    return configs


def _file(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    return str(path)


FILE = {
    "seed": 5,
    "tag": "x",
    "size": "tiny",
    "task": "i2i",
    "model": "ours",
    "dataset": "synthetic",
    "results_dir": "from-file",
    "train": {"max_epochs": 2},
}


def test_the_file_overrides_the_flag_defaults(tmp_path, recorded):
    res = runner.invoke(app, ["run", "--config", _file(tmp_path, FILE)])
    assert res.exit_code == 0, res.output
    cfg = recorded[-1]
    assert (cfg.seed, cfg.tag, cfg.task, cfg.model, cfg.results_dir, cfg.train.max_epochs) == (
        5,
        "x",
        "i2i",
        "ours",
        "from-file",
        2,
    )
    assert cfg.model_args == model_defaults("ours")["model_args"]  # the base config of the file's model


def test_explicit_flags_override_the_file_and_set_overrides_both(tmp_path, recorded):
    res = runner.invoke(
        app,
        [
            "run",
            "--config",
            _file(tmp_path, FILE),
            "--seed",
            "7",
            "--tag",
            "y",
            "--epochs",
            "3",
            "--model",
            "clip",
            "--results-dir",
            str(tmp_path / "r"),
            "--task",
            "retrieval",
            "--set",
            "seed=9",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = recorded[-1]
    assert (cfg.seed, cfg.tag, cfg.task, cfg.model, cfg.train.max_epochs) == (9, "y", "retrieval", "clip", 3)
    assert cfg.results_dir == str(tmp_path / "r")
    assert cfg.model_args == model_defaults("clip").get("model_args", {})
    # a flag given with its default value still counts as given
    res = runner.invoke(app, ["run", "--config", _file(tmp_path, FILE), "--seed", "0", "--no-strict"])
    assert recorded[-1].seed == 0 and recorded[-1].data.strict is False
    res = runner.invoke(app, ["run", "--config", _file(tmp_path, {"model": "clip", "data": {"strict": True}})])
    assert recorded[-1].data.strict is True


def test_without_a_file_the_config_and_its_hash_are_unchanged(tmp_path, recorded):
    """The former ``bench run`` built base < CLI (every flag, defaults included) < --set."""
    res = runner.invoke(app, ["run", "--model", "blip2", "--epochs", "1", "--seed", "3", "--set", "eval.ks=[1,5]"])
    assert res.exit_code == 0, res.output
    before = build_run_config(
        model_defaults("blip2"),
        {
            "model": "blip2",
            "dataset": "synthetic",
            "size": "tiny",
            "tag": "default",
            "task": "retrieval",
            "seed": 3,
            "results_dir": "results",
            "train": {"max_epochs": 1},
        },
        {"eval": {"ks": [1, 5]}},
    )
    assert recorded[-1] == before and recorded[-1].config_hash() == before.config_hash()
    assert recorded[-1].training_hash() == before.training_hash()


def test_the_full_size_recipe_comes_from_the_size_the_layers_name(tmp_path, recorded):
    res = runner.invoke(
        app, ["run", "--config", _file(tmp_path, {"model": "clip", "size": "full"}), "--pretrained", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    full = model_defaults("clip", "full")
    assert recorded[-1].size == "full"
    assert {k: v for k, v in recorded[-1].model_args.items() if k != "pretrained"} == {
        k: v for k, v in full.get("model_args", {}).items() if k != "pretrained"
    }


def test_feedback_and_ablate_share_the_precedence(tmp_path, monkeypatch):
    import benchmark.ablate as ablate
    import benchmark.feedback.session as session

    seen = {}

    def stop(cfg, *_, **__):
        seen["cfg"] = cfg
        raise ConfigError("recorded")

    monkeypatch.setattr(session, "run_feedback", stop)
    path = _file(tmp_path, {"seed": 5, "tag": "x", "results_dir": str(tmp_path / "r")})
    res = runner.invoke(app, ["feedback", "--model", "clip", "--config", path])
    assert res.exit_code == 2 and "recorded" in res.output
    assert (seen["cfg"].seed, seen["cfg"].tag) == (5, "x")
    res = runner.invoke(app, ["feedback", "--model", "clip", "--config", path, "--seed", "6"])
    assert seen["cfg"].seed == 6

    def record(ablation, overrides, **_):
        seen["overrides"] = overrides
        return []

    monkeypatch.setattr(ablate, "run_ablation", record)
    res = runner.invoke(app, ["ablate", "qscaler", "--config", path, "--epochs", "1"])
    assert res.exit_code == 0, res.output
    arm = ablate.get("qscaler").arms[0]
    cfg = ablate.arm_config(ablate.get("qscaler"), arm, *seen["overrides"])
    assert (cfg.seed, cfg.train.max_epochs) == (5, 1)


def test_flag_overrides_nest_every_flag():
    out = flag_overrides(
        {
            "epochs": 2,
            "data_root": Path("/d"),
            "pretrained": "a/b",
            "strict": True,
            "devices": 2,
            "strategy": "ddp",
            "resume": "never",
            "seed": None,
        }
    )
    assert out == {
        "train": {"max_epochs": 2, "devices": 2, "strategy": "ddp", "resume": "never"},
        "data": {"root": "/d", "strict": True},
        "model_args": {"pretrained": "a/b"},
    }


def test_layers_order(tmp_path):
    flags = CliConfig(
        given={"seed": 7},
        defaults={"seed": 0, "tag": "default"},
        config=Path(_file(tmp_path, {"seed": 5})),
        sets=("tag=z",),
    )
    assert flags.layers() == [{"seed": 0, "tag": "default"}, {"seed": 5}, {"seed": 7}, {"tag": "z"}]
    cfg = flags.build({"model": "clip"})
    assert (cfg.seed, cfg.tag) == (7, "z")


def test_a_full_size_checkpoint_runs_at_full_size(tmp_path, recorded):
    """``--checkpoint`` of a fine-tuned checkpoint (its saved config names a pretrained base) runs
    with the full-size recipe's settings and records the base as ``model_args.pretrained``; a size
    or a base given explicitly wins; a tiny checkpoint stays tiny."""
    full, tiny = tmp_path / "full", tmp_path / "tiny"
    for folder, pretrained in ((full, "/models/blip2-itm-vit-g"), (tiny, None)):
        folder.mkdir()
        (folder / "suite_config.json").write_text(json.dumps({"pretrained": pretrained, "k_test": 4}))

    def run(*extra: str):
        res = runner.invoke(app, ["run", "--model", "ours", *extra])
        assert res.exit_code == 0, res.output
        return recorded[-1]

    cfg = run("--checkpoint", str(full))
    assert cfg.size == "full" and cfg.model_args["pretrained"] == "/models/blip2-itm-vit-g"
    assert cfg.data.global_batch_size == model_defaults("ours", "full")["data"]["global_batch_size"]
    assert run("--checkpoint", str(full), "--size", "tiny").size == "tiny"
    assert run("--checkpoint", str(full), "--pretrained", "Org/base").model_args["pretrained"] == "Org/base"
    assert (
        run("--checkpoint", str(tiny)).size == "tiny" and "pretrained" not in run("--checkpoint", str(tiny)).model_args
    )


def test_a_local_pretrained_folder_is_recorded_absolute(tmp_path, monkeypatch):
    """A checkpoint trained from ``--pretrained ckpt/base`` references its base: it must load from
    any working directory, and relative or absolute spellings are one config."""
    (tmp_path / "ckpt" / "base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    relative = build_run_config({"model": "blip2"}, {"size": "full", "model_args": {"pretrained": "ckpt/base"}})
    absolute = build_run_config(
        {"model": "blip2"}, {"size": "full", "model_args": {"pretrained": str(tmp_path / "ckpt" / "base")}}
    )
    assert relative.model_args["pretrained"] == str((tmp_path / "ckpt" / "base").resolve())
    assert relative.config_hash() == absolute.config_hash()
    hub = build_run_config({"model": "blip2"}, {"size": "full", "model_args": {"pretrained": "Org/m"}})
    assert hub.model_args["pretrained"] == "Org/m"  # a hub id (no such folder here) is left alone
