"""``bench reproduce``: the plan comes from the registries (every model, every ablation arm, the
report), shared and skipped steps, ``--only``, failures that do not stop the others, and a tiny
end to end run (slow)."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmark.ablation_folders import discover
from benchmark.cli import app
from benchmark.config import ConfigError, build_run_config, model_defaults, to_dict
from benchmark.registry import MODELS, Registry
from benchmark.regression.suite import suite_configs
from benchmark.reproduce.execute import execute_plan, failed, summary
from benchmark.reproduce.plan import SPEED_PAIRS, Plan, build_plan, claim_runs, dependency_order
from benchmark.reproduce.steps import (
    BrokenStep,
    ReportStep,
    RunSettings,
    RunStep,
    SharedStep,
    SkippedStep,
    Step,
    StepOutcome,
)
from lightning_modules.clip import ClipRetrieval
from tests.reporting_fixtures import ranks_with_hit_rate, write_result
from tests.reproduce_helpers import small_reproduce

runner = CliRunner()


class FullOnly(ClipRetrieval):
    """A model with no tiny variant (for the skip rule)."""

    sizes = ("full",)


class NeedsFullOnly(ClipRetrieval):
    checkpoint_dependencies: ClassVar[dict[str, str]] = {"vision_checkpoint": "fullonly"}


def _plan(tmp_path, *overrides: dict, **kw) -> Plan:
    return build_plan(
        list(overrides),
        results_dir=tmp_path / "results",
        out_dir=tmp_path / "reports",
        cache_dir=tmp_path / "cache",
        **kw,
    )


def _by_title(plan: Plan) -> dict[str, Step]:
    return {s.title: s for s in plan.steps}


def test_plan_covers_every_registered_model_and_every_ablation_arm(tmp_path):
    plan = _plan(tmp_path)
    steps = _by_title(plan)
    ablations = discover()
    arms = sum(len(a.arms) for a in ablations.values())
    assert len(plan.steps) == len(MODELS.names()) + len(SPEED_PAIRS) + len(claim_runs().matched) + arms + 1
    assert set(MODELS.names()) <= set(steps) and isinstance(plan.steps[-1], ReportStep)
    order = [s.title for s in plan.steps]
    speed = steps["ours (speed against blip2)"]  # the side-by-side timing the "faster" claim reads
    assert isinstance(speed, RunStep) and order.index(speed.title) > order.index("ours") > order.index("blip2")
    assert (speed.config.task, speed.config.task_args, speed.config.tag) == ("speed", {"baseline": "blip2"}, "default")
    assert speed.config.training_hash() == steps["ours"].config.training_hash()  # ours' own checkpoint
    # BLIP2 trained as many epochs as ours in total (its 4-epoch BLIP2 start + its own 4)
    matched = steps["blip2 (trained as long as ours: 8 epochs)"]
    assert isinstance(matched, RunStep) and (matched.config.model, matched.config.tag) == ("blip2", "matched-ours")
    ours_epochs = steps["ours"].config.train.max_epochs + steps["blip2"].config.train.max_epochs
    assert matched.config.train.max_epochs == ours_epochs == 8
    plain = to_dict(steps["blip2"].config) | {"tag": "matched-ours", "train": to_dict(steps["blip2"].config.train)}
    plain["train"]["max_epochs"] = 8
    assert matched.config.config_hash() == build_run_config(plain).config_hash()  # nothing else differs
    for name in MODELS.names():  # the run `bench run --model NAME` makes, after its dependencies
        step = steps[name]
        assert isinstance(step, RunStep) and step.config.tag == "default"
        plain = build_run_config(
            model_defaults(name),
            {"model": name, "dataset": "synthetic", "size": "tiny", "tag": "default", "seed": 0, "results_dir": "x"},
        )
        assert step.config.config_hash() == plain.config_hash()
        for dep in (getattr(MODELS.get(name), "checkpoint_dependencies", None) or {}).values():
            assert order.index(dep) < order.index(name)
    for ablation in ablations.values():
        for arm in ablation.arms:
            step = steps[f"{ablation.model} (ablation {ablation.name}: {arm.name})"]
            if arm.name == ablation.default_arm.name:  # the plain run of the model is that arm
                assert isinstance(step, SharedStep) and plan.steps[step.same_as].title == ablation.model
            else:
                assert isinstance(step, RunStep) and step.config.tag == f"ablate-{ablation.name}-{arm.name}"
                assert step.config.model_args[next(iter(arm.overrides["model_args"]))] is not None
    # `bench regress --subset clip` trains what the plan's clip step (the README's main job) trains
    (regress,) = suite_configs(["clip"], [], tmp_path, tmp_path)
    assert regress.training_hash() == steps["clip"].config.training_hash()


def test_a_new_model_or_ablation_joins_the_plan_and_unrunnable_ones_are_skipped(tmp_path):
    models = Registry("model")
    models.register("clip", "lightning_modules.clip:ClipRetrieval")
    models.register("clip2", "lightning_modules.clip:ClipRetrieval")  # no shipped config: the class defaults
    models.register("needsfull", "tests.test_reproduce:NeedsFullOnly")
    models.register("fullonly", "tests.test_reproduce:FullOnly")
    models.register("broken", "tests.test_reproduce:NoSuchClass")
    root = tmp_path / "ablations"
    for name, model in (("width", "clip"), ("onfull", "fullonly")):
        (root / name).mkdir(parents=True)
        (root / name / "_ablation.json").write_text(
            json.dumps({"model": model, "description": "d", "arms": ["wide", "narrow"]})
        )
        (root / name / "wide.json").write_text('{"model_args": {"embed_dim": 128}}')
        (root / name / "narrow.json").write_text('{"model_args": {"embed_dim": 64}}')
    plan = _plan(tmp_path, models=models, ablations_root=root)
    steps = _by_title(plan)
    assert [s.title for s in plan.steps][:5] == ["broken", "clip", "clip2", "fullonly", "needsfull"]
    assert (
        isinstance(steps["broken"], BrokenStep)
        and "cannot import tests.test_reproduce:NoSuchClass" in steps["broken"].error
    )
    assert isinstance(steps["clip2"], RunStep) and steps["clip2"].config.model == "clip2"
    assert "no tiny variant" in steps["fullonly"].reason
    assert steps["needsfull"].reason.startswith("needsfull starts from fullonly, which is not run (fullonly has no")
    assert isinstance(steps["clip (ablation width: wide)"], SharedStep)  # embed_dim 128 is CLIP's default
    assert steps["clip (ablation width: narrow)"].config.model_args == {"embed_dim": 64}
    assert "ablation onfull is on fullonly" in steps["fullonly (ablation onfull: wide)"].reason
    assert dependency_order(models) == ["broken", "clip", "clip2", "fullonly", "needsfull"]


def test_only_selects_steps_and_the_default_arm_runs_when_the_model_is_not_selected(tmp_path):
    plan = _plan(tmp_path, only=["qscaler"])
    assert [type(s).__name__ for s in plan.steps] == ["RunStep", "RunStep"]
    assert plan.steps[0].config.tag == "ablate-qscaler-with"
    plan = _plan(tmp_path, only=["ours,qscaler:with", "report"])
    assert [type(s).__name__ for s in plan.steps] == ["RunStep", "SharedStep", "ReportStep"]
    with pytest.raises(ConfigError, match=r"--only: unknown step\(s\) nosuch; valid: clip, blip2"):
        _plan(tmp_path, only=["nosuch"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "qscalr"], "--only: unknown step(s) qscalr"),
        (["--set", "tag=mine"], "tag is set by bench reproduce itself"),
        (["--set", "task=i2i"], "task is set by bench reproduce itself"),
        (["--set", "model_args.no_such_option=1"], "model_args.no_such_option"),
    ],
)
def test_bad_options_exit_2_before_anything_runs(tmp_path, args, message):
    res = runner.invoke(
        app, ["reproduce", "--results-dir", str(tmp_path / "results"), "--out-dir", str(tmp_path / "reports"), *args]
    )
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()


class Explodes(Step):
    def execute(self, settings, done) -> StepOutcome:
        raise RuntimeError("boom")


def test_a_failing_step_is_reported_and_the_others_continue(tmp_path):
    write_result(
        tmp_path / "results",
        model="clip",
        ranks=ranks_with_hit_rate(np.random.default_rng(0), 50, 0.5),
        sims=np.full(50, 0.5),
    )
    plan = Plan(
        (
            Explodes("ours", ("ours",)),
            SharedStep("ours (ablation a: x)", ("a",), same_as=0, same_title="ours"),
            BrokenStep("blip2", ("blip2",), "shipped config broken"),
            SkippedStep("x", ("x",), "no tiny variant"),
            ReportStep("report", ("report",), tmp_path / "results", tmp_path / "reports"),
        )
    )
    lines: list[str] = []
    records = execute_plan(plan, RunSettings(), echo=lambda m="", err=False: lines.append(m))
    assert [r.status for r in records] == ["failed", "failed", "failed", "skipped", "ok"]
    assert [r.title for r in failed(records)] == ["[1/5] ours", "[2/5] ours (ablation a: x)", "[3/5] blip2"]
    assert records[0].result == "RuntimeError: boom" and "which failed" in records[1].result
    assert any("Traceback" in line for line in lines) and "[5/5] report ..." in lines
    assert (tmp_path / "reports" / "comparison.md").is_file()
    table = summary(records).splitlines()
    assert table[0].split() == ["Step", "Status", "Seconds", "Result"] and len(table) == 2 + 5 + 1
    assert table[4].split()[:3] == ["[3/5]", "blip2", "failed"] and table[4].endswith("shipped config broken")
    assert table[-1].startswith("5 steps in ") and table[-1].endswith("s: 3 failed, 1 skipped, 1 ok")


def test_a_failing_run_keeps_existing_results_and_exits_1(tmp_path):
    rng = np.random.default_rng(0)
    path = write_result(
        tmp_path / "results", model="clip", ranks=ranks_with_hit_rate(rng, 50, 0.5), sims=np.full(50, 0.5)
    )
    before = path.read_bytes()
    res = runner.invoke(
        app,
        [
            "reproduce",
            "--only",
            "clip,report",
            "--no-skip-existing",
            "--bootstrap",
            "200",
            "--results-dir",
            str(tmp_path / "results"),
            "--out-dir",
            str(tmp_path / "reports"),
            "--set",
            'data.options={"n_train": 0}',
        ],
    )
    assert res.exit_code == 1, res.output
    assert "[1/2] clip: failed" in res.output and "n_train must be >= 1" in res.output
    assert "[2/2] report: ok" in res.output and "2 steps in" in res.output
    assert path.read_bytes() == before and (tmp_path / "reports" / "claims.md").is_file()


def test_dry_run_shows_the_steps_that_skip_existing_keeps(tmp_path):
    args = small_reproduce(tmp_path, "--only", "clip,report")
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    res = runner.invoke(app, args + ["--dry-run"])
    assert res.exit_code == 0 and "[1] clip: run\n" in res.output, res.output
    assert "[2] report: report into " in res.output and not (tmp_path / "results").exists()
    assert not hf_logging.is_progress_bar_enabled()  # no weight-loading bars without --progress
    hf_logging.enable_progress_bar()
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, args + ["--dry-run"])
    assert res.exit_code == 0 and "[1] clip: existing: " in res.output, res.output
    assert "--no-skip-existing runs it again" in res.output
    res = runner.invoke(app, args + ["--dry-run", "--no-skip-existing"])
    assert res.exit_code == 0 and "[1] clip: run\n" in res.output, res.output
    res = runner.invoke(app, [*args, "--dry-run", "--set", "train.max_epochs=2"])  # another config: runs
    assert res.exit_code == 0 and "[1] clip: run\n" in res.output, res.output


@pytest.mark.slow
def test_reproduce_end_to_end_on_a_small_synthscenes(tmp_path):
    """Every model, every arm and the report, on 64 training images, 1 epoch, no cost measurement."""
    args = small_reproduce(tmp_path)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    small = {"data": {"options": {"n_train": 64, "n_val": 16, "n_test": 24}, "batch_size": 32}}
    plan = _plan(tmp_path, small, {"train": {"max_epochs": 1}, "eval": {"measure": False}})
    # ours trains 1 epoch from a BLIP2 start trained with BLIP2's own 4 (the overrides do not reach it)
    assert "blip2 (trained as long as ours: 5 epochs): ok" in res.output
    n = len(plan.steps)
    for i, step in enumerate(plan.steps, 1):
        assert f"[{i}/{n}] {step.title}: " in res.output
        if isinstance(step, RunStep):
            assert step.config.result_path().name in res.output
            assert (tmp_path / "results" / step.config.result_path().name).is_file()
    ablations = (tmp_path / "reports" / "ablations.md").read_text()
    for ablation in discover().values():
        assert f"ablate-{ablation.name}-" in ablations, ablation.name  # every ablation table has its arms
    assert "not run" not in ablations
    first = {p.name: p.read_bytes() for p in (tmp_path / "results").glob("*.json")}
    res = runner.invoke(app, args + ["--only", ",".join(MODELS.names())])  # a second run keeps what is there
    assert res.exit_code == 0 and res.output.count(": existing in ") == len(MODELS.names()), res.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "results").glob("*.json")} == first
    res = runner.invoke(app, args + ["--dry-run"])
    assert res.exit_code == 0 and res.output.count(": existing: ") == sum(
        isinstance(step, RunStep) for step in plan.steps
    ), res.output
