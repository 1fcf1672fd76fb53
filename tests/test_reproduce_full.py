"""``bench reproduce --size full --data-root DIR``: the plan on real-format fixture folders (the
steps, the split sizes from the annotation files, the GPU-hour estimates), datasets absent from
DIR skipped, bad options refused with exit 2; and the estimate arithmetic."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from benchmark.ablation_folders import discover
from benchmark.cli import app
from benchmark.config import ConfigError
from benchmark.registry import MODELS, UnknownNameError
from benchmark.reproduce.estimate import CostError, ModelCost, estimate, load_costs
from benchmark.reproduce.full import DEFAULT_CHECKPOINTS, FullRunStep, build_full_plan, describe_full
from benchmark.reproduce.full_cli import DEFAULT_GPU_COSTS
from benchmark.reproduce.steps import ReportStep, RunSettings, SharedStep, SkippedStep
from tests.fixtures_real import write_coco_karpathy, write_medpix

runner = CliRunner()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """coco (Karpathy layout) and medpix (MedPix-2-0 layout); no rsicap."""
    root = tmp_path_factory.mktemp("real")
    coco = write_coco_karpathy(root / "coco")
    medpix = write_medpix(root / "medpix")
    return root, coco, medpix


def _plan(root, tmp_path, *overrides, **kw):
    return build_full_plan(
        root,
        list(overrides),
        results_dir=tmp_path / "results",
        out_dir=tmp_path / "reports",
        cache_dir=tmp_path / "cache",
        costs=load_costs(DEFAULT_GPU_COSTS),
        **kw,
    )


def test_full_plan_lists_every_model_on_every_dataset_found(data_root, tmp_path):
    root, coco, medpix = data_root
    plan = _plan(root, tmp_path)
    runs = [s for s in plan.steps if isinstance(s, FullRunStep)]
    rows = {(s.detail.model, s.detail.dataset) for s in runs if s.detail.arm == "-"}
    assert rows == {(m, d) for m in MODELS.names() for d in ("coco", "medpix")}
    for s in runs:
        cfg, d = s.config, s.detail
        assert cfg.size == "full" and cfg.data.root == str(root / d.dataset)
        family = "clip" if d.model == "clip" else "blip2"
        assert cfg.model_args["pretrained"] == DEFAULT_CHECKPOINTS[family]
        want = (
            (coco["train"][0], coco["test"][0], coco["test"][1])
            if d.dataset == "coco"
            else (medpix["train"][0], medpix["test"][0], medpix["test"][1])
        )
        assert (d.sizes.train_images, d.sizes.test_images, d.sizes.test_queries) == want
        assert d.epochs == cfg.train.max_epochs > 0
        assert d.estimate is not None and d.estimate.train_h > 0 and d.estimate.eval_h > 0
    skipped = [s for s in plan.steps if isinstance(s, SkippedStep)]
    assert {s.title for s in skipped} == {f"{m} on rsicap" for m in MODELS.names()}
    assert all("not found" in s.reason and "rsicap" in s.reason for s in skipped)
    assert isinstance(plan.steps[-1], ReportStep)


def test_full_plan_runs_every_ablation_arm_on_coco_sharing_the_plain_run(data_root, tmp_path):
    root, _, _ = data_root
    plan = _plan(root, tmp_path)
    arms = [s for s in plan.steps if "(ablation " in s.title]
    assert len(arms) == sum(len(a.arms) for a in discover().values())
    shared = [s for s in arms if isinstance(s, SharedStep)]
    assert shared and all(s.same_title == "ours on coco" for s in shared)
    for s in arms:
        if isinstance(s, FullRunStep):
            assert s.config.dataset == "coco" and s.config.tag.startswith("ablate-") and s.config.size == "full"


def test_ablations_skipped_without_coco(tmp_path):
    write_medpix(tmp_path / "data" / "MedPix-2-0")  # the repository's own folder name is found too
    plan = _plan(tmp_path / "data", tmp_path)
    arms = [s for s in plan.steps if "(ablation " in s.title]
    assert arms and all(isinstance(s, SkippedStep) and "coco" in s.reason for s in arms)
    assert any(isinstance(s, FullRunStep) and s.config.dataset == "medpix" for s in plan.steps)


def test_user_overrides_and_models_reach_the_steps(data_root, tmp_path):
    root, _, _ = data_root
    one = _plan(root, tmp_path, model_names=["blip2"])
    two = _plan(root, tmp_path, {"train": {"max_epochs": 10}}, model_names=["blip2"], only=["blip2:coco"])
    (a,) = [s for s in one.steps if isinstance(s, FullRunStep) and s.title == "blip2 on coco"]
    (b,) = [s for s in two.steps if isinstance(s, FullRunStep)]
    assert b.detail.epochs == 10 and a.detail.epochs == 5
    assert b.detail.estimate.train_h == pytest.approx(2 * a.detail.estimate.train_h)
    assert b.detail.estimate.eval_h == pytest.approx(a.detail.estimate.eval_h)
    assert {s.config.model for s in one.steps if isinstance(s, FullRunStep)} == {"blip2"}


def test_bad_plan_options(data_root, tmp_path):
    root, _, _ = data_root
    with pytest.raises(ConfigError, match="does not exist"):
        _plan(tmp_path / "nowhere", tmp_path)
    with pytest.raises(UnknownNameError):
        _plan(root, tmp_path, model_names=["nope"])
    with pytest.raises(ConfigError, match="size"):
        _plan(root, tmp_path, {"size": "tiny"})


def test_cli_dry_run_prints_the_plan_with_estimates(data_root, tmp_path):
    root, _, _ = data_root
    res = runner.invoke(
        app,
        [
            "reproduce",
            "--size",
            "full",
            "--data-root",
            str(root),
            "--dry-run",
            "--results-dir",
            str(tmp_path / "r"),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = res.output
    assert "dataset rsicap: skipped (not found" in out
    lines = [line for line in out.splitlines() if line.startswith("[") and "| est. " in line]
    assert len(lines) >= 2 * len(MODELS.names())
    assert "model blip2 | dataset coco | arm - | epochs 5 | lr 1e-05" in out
    assert "total: est." in out and "assumption: estimates, not measurements" in out
    assert not (tmp_path / "r").exists()  # nothing ran
    # the default hub checkpoints are not in this machine's Hugging Face cache: the plan says so
    # (a real run would fail on each); a local folder that holds a checkpoint raises no problem
    assert "checkpoint problem: model_args.pretrained (--pretrained) 'Salesforce/blip2-itm-vit-g'" in out
    local = tmp_path / "blip2-local"
    local.mkdir()
    (local / "config.json").write_text("{}")
    res = runner.invoke(
        app, ["reproduce", "--size", "full", "--data-root", str(root), "--dry-run", "--pretrained-blip2", str(local)]
    )
    problems = [line for line in res.output.splitlines() if line.startswith("checkpoint problem")]
    assert res.exit_code == 0 and problems and all("openai/clip-vit-large-patch14" in line for line in problems)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data-root", "{missing}"], "does not exist"),
        ([], "needs --data-root"),
        (["--data-root", "{root}", "--models", "nope"], "nope"),
        (["--data-root", "{root}", "--gpu-costs", "{missing}"], "file not found"),
        (["--data-root", "{root}", "--pretrained-blip2", " "], "--pretrained-blip2"),
    ],
)
def test_cli_bad_full_options_exit_2(data_root, tmp_path, args, message):
    root, _, _ = data_root
    args = [a.format(root=root, missing=tmp_path / "missing") for a in args]
    res = runner.invoke(app, ["reproduce", "--size", "full", "--dry-run", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_cli_tiny_refuses_full_options_and_bad_sizes(tmp_path):
    res = runner.invoke(app, ["reproduce", "--data-root", str(tmp_path), "--dry-run"])
    assert res.exit_code == 2 and "only with --size full" in res.output
    res = runner.invoke(app, ["reproduce", "--size", "huge", "--dry-run"])
    assert res.exit_code == 2 and "--size must be tiny or full" in res.output


def test_cli_tiny_dry_run_lists_the_tiny_plan(tmp_path):
    res = runner.invoke(
        app, ["reproduce", "--dry-run", "--results-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")]
    )
    assert res.exit_code == 0, res.output
    assert "[1] " in res.output and "report: report" in res.output
    assert not (tmp_path / "r").exists()


def test_estimate_arithmetic():
    """encode 100 img/s, step 50 img/s at B = 10 with k = 10: the step's 0.1 s beyond encoding
    covers 100 pairs, so 1 ms a pair."""
    cost = ModelCost(encode_img_s=100.0, step_img_s=50.0, batch=10, k_test=10)
    e = estimate(cost, epochs=2, train_images=300, test_images=20, queries=100, k_test=5)
    assert e.train_h * 3600 == pytest.approx(300 * 2 * 3 / 50)
    assert e.eval_h * 3600 == pytest.approx(20 / 100 + (100 * 5 + 20 * 5) * 0.001)
    clip = ModelCost(encode_img_s=100.0, step_img_s=50.0, batch=10, k_test=None)
    e = estimate(clip, epochs=0, train_images=300, test_images=20, queries=100, k_test=None)
    assert e.train_h == 0 and e.eval_h * 3600 == pytest.approx(20 / 100 + 100 * 0.01)


@pytest.mark.parametrize("bad", [dict(encode_img_s=0.0), dict(step_img_s=float("nan")), dict(batch=0), dict(k_test=-1)])
def test_model_cost_refuses_bad_values(bad):
    with pytest.raises(CostError):
        ModelCost(**{**dict(encode_img_s=1.0, step_img_s=1.0, batch=1, k_test=None), **bad})


def test_load_costs_reads_the_shipped_measurements(tmp_path):
    costs = load_costs(DEFAULT_GPU_COSTS)
    assert set(MODELS.names()) <= set(costs.models) and "H200" in costs.device
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CostError, match="not a gpu_costs.json"):
        load_costs(tmp_path / "bad.json")


def test_describe_full_marks_estimates(data_root, tmp_path):
    root, _, _ = data_root
    lines = describe_full(_plan(root, tmp_path, only=["clip"]), RunSettings())
    assert any(line.startswith("[1] model clip | dataset coco") and "GPU-h" in line for line in lines)
    assert any(line.startswith("assumption: training: 3 x") for line in lines)
