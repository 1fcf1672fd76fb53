"""The ablation folders as the one source of ablations: the declared default arm is the model's
plain run (checked against the model's own defaults), and bad optional fields are refused."""

from __future__ import annotations

import json

import pytest

from benchmark.ablate import check_default
from benchmark.ablation_folders import discover
from benchmark.config import ConfigError, build_run_config, model_defaults
from benchmark.reporting.ablation_arms import report_ablations
from lightning_modules.idq_former import IdqConfig


def _folder(root, meta: dict, arms: dict[str, dict]):
    folder = root / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_ablation.json").write_text(json.dumps({"model": "ours", "description": "d", "arms": list(arms)} | meta))
    for arm, overrides in arms.items():
        (folder / f"{arm}.json").write_text(json.dumps(overrides))
    return root


@pytest.mark.parametrize("name", sorted(discover()))
def test_every_shipped_default_arm_is_the_models_plain_run(name):
    ablation = discover()[name]
    check_default(ablation)
    report = report_ablations()[name]
    # the report's default value (used for runs that do not state the field) is the model config's own
    assert report.default == getattr(IdqConfig(**build_run_config(model_defaults("ours")).model_args), report.field)


def test_a_default_arm_that_changes_the_model_is_refused(tmp_path):
    arms = {"off": {"model_args": {"qscaler": False}}, "on": {"model_args": {"qscaler": True}}}
    ablation = discover(_folder(tmp_path, {}, arms))["demo"]  # the first arm is the default unless stated
    assert ablation.default_arm.name == "off"
    with pytest.raises(ConfigError, match=r"_ablation\.json: 'default' names arm 'off'.*\['qscaler'\]"):
        check_default(ablation)
    check_default(discover(_folder(tmp_path, {"default": "on"}, arms))["demo"])


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"default": "maybe"}, "'default' must name the arm that is the model's plain run"),
        ({"labels": {"nosuch": "x"}}, "'labels' must map arm names"),
        ({"labels": {"on": 1}}, "'labels' must map arm names"),
        ({"title": 3}, "field 'title' must be a str"),
    ],
)
def test_bad_optional_fields_are_refused(tmp_path, meta, message):
    _folder(tmp_path, meta, {"on": {"model_args": {"qscaler": True}}, "off": {"model_args": {"qscaler": False}}})
    with pytest.raises(ConfigError, match=message):
        discover(tmp_path)
