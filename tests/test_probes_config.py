"""Issue 26's probes of configs, the CLI and regress, run through the real CLI (in-process,
typer's CliRunner): each must exit with code 2, print one message naming the file, field or
option and what was expected, show no traceback, and fail before any data is prepared (the
cache holds no generated data afterwards)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _import_models_outside_the_runner():
    """Import the models (and transformers, whose logger binds the stderr of its first use) before
    CliRunner swaps the streams: a warning then never writes to a stream a finished invoke closed."""
    from benchmark.registry import MODELS

    for name in MODELS.names():
        MODELS.get(name)


BASELINE = Path(__file__).resolve().parents[1] / "results" / "baseline" / "clip__synthetic__regress.json"


def _files(tmp: Path) -> dict[str, Path]:
    """The bad --config files of the probes."""
    files = {
        "latin1": ('{"tag": "caf\u00e9"}'.encode("latin-1")),
        "deep": ("[" * 100_000 + "]" * 100_000).encode(),
        "deep_object": ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(),
        "huge_int": ('{"seed": ' + "9" * 5000 + "}").encode(),
        "nan": b'{"train": {"optim": {"lr": NaN}}}',
        "list": b"[1, 2]",
        "truncated": b'{"seed": 5, "tag": ',
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp / f"{name}.json"
        out[name].write_bytes(data)
    out["dir"] = tmp / "a_folder.json"
    out["dir"].mkdir(exist_ok=True)
    out["a_file"] = tmp / "a_file"
    out["a_file"].write_text("x")
    return out


#: (probe id, run arguments (``{name}`` = a path of :func:`_files`), what the message must say)
RUN_PROBES = [
    ("lr-nan", ["--set", "train.optim.lr=NaN"], "train.optim.lr: NaN is not a number"),
    ("lr-inf", ["--set", "train.optim.lr=Infinity"], "train.optim.lr: Infinity is not a number"),
    ("lr-overflow", ["--set", "train.optim.lr=1e999"], "train.optim.lr: the number 1e999 is out of the range"),
    ("clip-nan", ["--epochs", "0", "--set", "train.gradient_clip_val=NaN"], "train.gradient_clip_val: NaN"),
    ("clip-negative", ["--set", "train.gradient_clip_val=-1"], "train.gradient_clip_val must be a finite number >= 0"),
    ("memmap-nan", ["--set", "eval.memmap_min_mb=NaN"], "eval.memmap_min_mb: NaN"),
    (
        "set-value-then-section",
        ["--set", "train=3", "--set", "train.max_epochs=2"],
        "train was set to a value by 'train=3', so it cannot also hold options",
    ),
    (
        "set-section-then-value",
        ["--set", "train.max_epochs=2", "--set", "train=3"],
        "train already holds options set by 'train.max_epochs=2'",
    ),
    ("set-empty-key-part", ["--set", "train..max_epochs=2"], "--set expects KEY=VALUE"),
    ("set-huge-int", ["--set", "seed=" + "9" * 5000], "--set seed: a number too large to read"),
    ("set-deep", ["--set", "model_args.x=" + "[" * 50_000 + "]" * 50_000], "nested deeper than 200"),
    ("seed-negative", ["--seed", "-1"], "seed must be an integer in [0, 4294967295]"),
    ("seed-too-large", ["--seed", str(2**32)], "seed must be an integer in [0, 4294967295]"),
    ("strategy-bogus", ["--strategy", "bogus"], "train.strategy (--strategy) must be one of Lightning's strategies"),
    ("precision-banana", ["--set", "train.precision=banana"], "train.precision must be one of Lightning's precision"),
    ("accelerator-bogus", ["--set", "train.accelerator=abacus"], "train.accelerator must be one of"),
    (
        "num-workers-huge",
        ["--set", "data.num_workers=100000"],
        "data.num_workers must be null (auto) or an integer in [0, 64]",
    ),
    (
        "pretrained-missing",
        ["--size", "full", "--pretrained", "/nonexistent"],
        "model_args.pretrained (--pretrained) '/nonexistent': no such file or folder",
    ),
    ("checkpoint-missing", ["--checkpoint", "/nonexistent/ckpt"], "--checkpoint /nonexistent/ckpt: not a folder"),
    ("config-non-utf8", ["--config", "{latin1}"], "latin1.json: not UTF-8"),
    ("config-deep-array", ["--config", "{deep}"], "deep.json: arrays/objects nested deeper than 200"),
    ("config-deep-object", ["--config", "{deep_object}"], "deep_object.json: arrays/objects nested deeper than 200"),
    ("config-huge-int", ["--config", "{huge_int}"], "huge_int.json: a number too large to read"),
    ("config-directory", ["--config", "{dir}"], "a_folder.json: is a directory"),
    ("config-nan", ["--config", "{nan}"], "nan.json: NaN is not a number"),
    ("config-not-object", ["--config", "{list}"], "list.json: must hold a JSON object"),
    ("config-truncated", ["--config", "{truncated}"], "truncated.json: not valid JSON (line 1"),
    ("config-absent", ["--config", "/nonexistent/c.json"], "--config file /nonexistent/c.json: not found"),
    ("results-dir-is-file", ["--results-dir", "{a_file}"], "results_dir (--results-dir)"),
    ("results-dir-under-file", ["--results-dir", "{a_file}/sub"], "is not a folder"),
    ("cache-dir-is-file", ["--cache-dir", "{a_file}"], "cache_dir (--cache-dir / $INSTRUCTSEE_CACHE)"),
    ("unknown-model-from-file", ["--set", "model=clipp"], "unknown model 'clipp'"),
]


def _run(tmp_path: Path, args: list[str]):
    files = _files(tmp_path)
    args = [a.format(**{k: str(v) for k, v in files.items()}) if "{" in a and len(a) < 200 else a for a in args]
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "clip",
            "--results-dir",
            str(tmp_path / "r"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
            *args,
        ],
    )
    return res


def _assert_clear_error(res, message: str, tmp_path: Path | None = None) -> None:
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # no exception escaped
    assert "Traceback" not in res.output
    assert message in res.output, res.output
    assert res.output.count("error:") == 1
    if tmp_path is not None:
        assert not (tmp_path / "cache" / "data").exists()  # failed before any data was prepared
        assert not (tmp_path / "r").exists()  # and wrote nothing


@pytest.mark.parametrize("args,message", [p[1:] for p in RUN_PROBES], ids=[p[0] for p in RUN_PROBES])
def test_run_probe_exits_2_naming_the_option(tmp_path, args, message):
    _assert_clear_error(_run(tmp_path, args), message, tmp_path)


def test_accelerator_gpu_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    _assert_clear_error(
        _run(tmp_path, ["--set", "train.accelerator=gpu"]),
        "train.accelerator='gpu': no such device on this machine",
        tmp_path,
    )


def test_read_only_results_and_cache_dirs(tmp_path):
    ro = Path("/sys/kernel")  # sysfs: read-only even for root
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    elif not ro.is_dir() or (os.access(ro, os.W_OK) and _writable(ro)):
        pytest.skip("no read-only folder on this machine")
    _assert_clear_error(_run(tmp_path, ["--results-dir", str(ro / "results")]), "not writable")
    _assert_clear_error(
        _run(tmp_path, ["--cache-dir", str(ro / "cache")]), "cache_dir (--cache-dir / $INSTRUCTSEE_CACHE)"
    )


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.mark.parametrize("option", ["--results-dir", "--cache-dir"])
def test_full_disk_fails_at_start(tmp_path, monkeypatch, option):
    """A full disk refuses the probe's 4 KiB (ENOSPC at write or fsync); simulated here, checked on a
    full 64 KiB tmpfs by hand."""

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    res = _run(tmp_path, [option, str(tmp_path / "out")])
    _assert_clear_error(res, "No space left on device", tmp_path)
    assert not list((tmp_path).glob(".write-probe-*"))  # the probe file is removed


def test_nan_timeout_of_the_llm_client(tmp_path):
    for value in ("NaN", "Infinity", "1e999"):
        res = runner.invoke(
            app,
            [
                "feedback",
                "--model",
                "clip",
                "--results-dir",
                str(tmp_path / "r"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--feedback-set",
                f"llm.timeout_s={value}",
            ],
        )
        _assert_clear_error(res, "llm.timeout_s", tmp_path)


def test_bad_flags_of_feedback_ablate_and_vqa(tmp_path):
    common = ["--results-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache")]
    res = runner.invoke(app, ["feedback", "--model", "clip", *common, "--seed", "-1"])
    _assert_clear_error(res, "seed must be an integer", tmp_path)
    res = runner.invoke(app, ["ablate", "qscaler", *common, "--set", "train.precision=banana"])
    _assert_clear_error(res, "train.precision must be one of", tmp_path)
    res = runner.invoke(app, ["ablate", "qscaler", *common, "--set", "train.strategy=bogus"])
    _assert_clear_error(res, "train.strategy (--strategy)", tmp_path)
    image = tmp_path / "x.png"
    image.write_bytes(b"not read")
    res = runner.invoke(
        app,
        [
            "vqa",
            "--image",
            str(image),
            "--question",
            "q",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--set",
            "train.optim.lr=NaN",
        ],
    )
    _assert_clear_error(res, "train.optim.lr: NaN", tmp_path)


# -- bench regress -------------------------------------------------------------------------------
def _regress(tmp_path: Path, baseline: dict | bytes | None, new: dict | None = None):
    base_dir, new_dir = tmp_path / "baseline", tmp_path / "new"
    base_dir.mkdir(exist_ok=True)
    new_dir.mkdir(exist_ok=True)
    good = json.loads(BASELINE.read_text())
    (new_dir / BASELINE.name).write_text(json.dumps(new if new is not None else good))
    target = base_dir / BASELINE.name
    if isinstance(baseline, bytes):
        target.write_bytes(baseline)
    else:
        target.write_text(json.dumps(baseline if baseline is not None else good))
    return runner.invoke(
        app, ["regress", "--subset", "clip", "--from-results", str(new_dir), "--baseline-dir", str(base_dir)]
    )


def _with_metric(key: str, value) -> dict:
    result = json.loads(BASELINE.read_text())
    result["metrics"][key] = value
    return result


REGRESS_PROBES = [
    ("baseline-truncated", lambda: BASELINE.read_bytes()[:500], None, "baseline result file"),
    ("baseline-non-utf8", lambda: b'{"metrics": {"t2i/R@5": 0.5}, "tag": "caf\xe9"}', None, "not UTF-8"),
    ("baseline-deep", lambda: ("[" * 100_000 + "]" * 100_000).encode(), None, "nested deeper than 200"),
    (
        "baseline-huge-int",
        lambda: ('{"metrics": {"t2i/R@5": ' + "1" * 5000 + "}}").encode(),
        None,
        "a number too large to read",
    ),
    ("baseline-not-a-result", lambda: b"[1]", None, "a result file holds a JSON object"),
    (
        "baseline-string-metric",
        lambda: _with_metric("t2i/R@5", "0.5"),
        None,
        "field metrics.t2i/R@5 must be a number or null, got '0.5'",
    ),
    (
        "new-string-metric",
        lambda: None,
        lambda: _with_metric("t2i/R@5", "0.5"),
        "field metrics.t2i/R@5 must be a number or null, got '0.5'",
    ),
    (
        "new-bool-metric",
        lambda: None,
        lambda: _with_metric("t2i/MRR", True),
        "field metrics.t2i/MRR must be a number or null, got True",
    ),
    (
        "new-out-of-range-metric",
        lambda: None,
        lambda: _with_metric("t2i/R@5", 7.5),
        "field metrics.t2i/R@5 = 7.5 is out of range (expected in [0, 1])",
    ),
]


@pytest.mark.parametrize("baseline,new,message", [p[1:] for p in REGRESS_PROBES], ids=[p[0] for p in REGRESS_PROBES])
def test_regress_probe_exits_2_naming_the_file(tmp_path, baseline, new, message):
    res = _regress(tmp_path, baseline(), new() if new else None)
    _assert_clear_error(res, message)
    assert BASELINE.name in res.output


def test_regress_baseline_is_a_directory_or_tolerances_broken(tmp_path):
    res = _regress(tmp_path, None)
    assert res.exit_code == 0, res.output  # the good pair compares clean
    target = tmp_path / "baseline" / BASELINE.name
    target.unlink()
    target.mkdir()
    _assert_clear_error(
        runner.invoke(
            app,
            [
                "regress",
                "--subset",
                "clip",
                "--from-results",
                str(tmp_path / "new"),
                "--baseline-dir",
                str(tmp_path / "baseline"),
            ],
        ),
        "is a directory",
    )
    shutil.rmtree(target)
    _regress(tmp_path, None)
    (tmp_path / "baseline" / "tolerances.json").write_bytes(b'{"rules": [{"pattern": "*", "abs": NaN}]}')
    _assert_clear_error(
        runner.invoke(
            app,
            [
                "regress",
                "--subset",
                "clip",
                "--from-results",
                str(tmp_path / "new"),
                "--baseline-dir",
                str(tmp_path / "baseline"),
            ],
        ),
        "tolerances file",
    )


# -- a truncated cached checkpoint --------------------------------------------------------------
@pytest.mark.slow  # prepares the SynthScenes data before it finds the checkpoint (~1 min here)
def test_truncated_cached_checkpoint_names_the_folder_and_retrain(tmp_path):
    from benchmark.config import from_dict
    from benchmark.registry import MODELS
    from benchmark.run_flags import CliConfig
    from benchmark.store import checkpoint_dir

    cfg = CliConfig(given={"model": "clip", "results_dir": tmp_path / "r", "cache_dir": tmp_path / "cache"}).build()
    model_cls = MODELS.get("clip")
    model_config = from_dict(model_cls.Config, cfg.model_args, "model_args")
    ckpt = checkpoint_dir(cfg, {}, model_config, model_cls)
    model_cls.create(model_config, cfg.train.optim, ["a red circle", "a blue square"]).save_checkpoint(ckpt)
    weights = next(ckpt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "clip",
            "--results-dir",
            str(tmp_path / "r"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 2, res.output
    assert f"cached checkpoint {ckpt} cannot be loaded" in res.output and "--retrain" in res.output
    assert "Traceback" not in res.output
