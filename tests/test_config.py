"""Run configs: validation names the bad option, JSON round trip, overrides, hashes."""

from __future__ import annotations

import json

import pytest

from benchmark.config import (
    ConfigError,
    RunConfig,
    build_run_config,
    from_dict,
    load_override_file,
    parse_set,
    to_dict,
)


def test_round_trip_is_exact():
    cfg = build_run_config(
        {"model": "clip"}, {"train": {"max_epochs": 3, "optim": {"lr": 0.01}}, "eval": {"ks": [1, 2]}}
    )
    again = from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    assert cfg.eval.ks == (1, 2) and cfg.train.optim.lr == 0.01


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"train": {"max_epochz": 1}}, "train.max_epochz"),
        ({"train": {"max_epochs": "three"}}, "train.max_epochs: expected an integer"),
        ({"train": {"max_epochs": -1}}, "train.max_epochs must be >= 0"),
        ({"eval": {"directions": ["t2x"]}}, "eval.directions"),
        ({"size": "huge"}, "size must be one of"),
        ({"tag": "../escape"}, "tag must match"),
        ({"data": {"templates": ["no placeholder"]}}, "must contain '{caption}'"),
        ({"train": {"deterministic": "yes"}}, "expected true or false"),
    ],
)
def test_bad_options_are_named(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        build_run_config({"model": "clip"}, override)
    assert needle in str(e.value)


def test_parse_set_and_files(tmp_path):
    assert parse_set(["train.max_epochs=3", "model_args.pretrained=/x/y", "eval.ks=[1,5]"]) == {
        "train": {"max_epochs": 3},
        "model_args": {"pretrained": "/x/y"},
        "eval": {"ks": [1, 5]},
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["train.max_epochs"])
    # a value that starts like a JSON object or list must parse: its JSON error is the message
    for raw in ("{bad json", " [1, 2"):
        with pytest.raises(ConfigError, match="--set data.options: not valid JSON"):
            parse_set([f"data.options={raw}"])
    assert parse_set(["model_args.pretrained=a{b"]) == {"model_args": {"pretrained": "a{b"}}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_override_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_override_file(tmp_path / "missing.json")


def test_hashes_ignore_paths_but_not_content():
    a = build_run_config({"model": "clip"}, {"results_dir": "r1", "tag": "a"})
    b = build_run_config({"model": "clip"}, {"results_dir": "r2", "tag": "b", "cache_dir": "/elsewhere"})
    c = build_run_config({"model": "clip"}, {"train": {"max_epochs": 1}})
    d = build_run_config({"model": "clip"}, {"eval": {"ks": [1]}})
    assert a.config_hash() == b.config_hash() != c.config_hash()
    assert a.training_hash() == d.training_hash() and a.config_hash() != d.config_hash()
    assert a.training_hash() != c.training_hash()
