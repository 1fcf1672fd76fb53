"""Resume after a crash: a ``bench run`` killed (SIGKILL) mid-epoch and run again resumes from
its last resume point and ends with exactly the metrics of an uninterrupted run. The kill is
deterministic (``tests/kill_midway_script.py``: in epoch 1, after its first batch), not timed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_blip2 import BLIP2_ARGS, SMALL, TINY_QFORMER

ROOT = Path(__file__).resolve().parent.parent


OURS_ARGS = TINY_QFORMER | {
    "l_base": 2,
    "l_max": 12,
    "l_init": 8,
    "qscaler_hidden": 16,
    "itm_max_anchors": 8,
    "dependency_overrides": {"blip2_checkpoint": {"train": {"max_epochs": 1}, "model_args": BLIP2_ARGS}},
}


def _command(model: str, results: Path, cache: Path, *extra: str) -> list[str]:
    model_args = BLIP2_ARGS if model == "blip2" else OURS_ARGS
    return [
        sys.executable,
        "-m",
        "benchmark.cli",
        "run",
        "--model",
        model,
        "--dataset",
        "synthetic",
        "--epochs",
        "4",
        "--no-progress",
        "--set",
        f"data.options={SMALL}",
        "--set",
        "data.batch_size=8",
        "--set",
        "eval.measure=false",
        "--set",
        f"model_args={json.dumps(model_args)}",
        "--results-dir",
        str(results),
        "--cache-dir",
        str(cache),
        *extra,
    ]


#: the LightningModule class trained by each model's run (the kill script matches it)
CLASSES = {"blip2": "Blip2Retrieval", "ours": "IdqFormerRetrieval"}


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


@pytest.mark.slow  # ~1.5 min per model: the model trained three times over (and its dependencies twice)
@pytest.mark.parametrize("model", ["blip2", "ours"])  # ours: its bank order (set at step 1) survives a resume
def test_killed_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path, model):
    straight = subprocess.run(
        _command(model, tmp_path / "straight", tmp_path / "cache-a"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    cache = tmp_path / "cache-b"
    command = _command(model, tmp_path / "killed", cache)
    killed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "kill_midway_script.py"),
            CLASSES[model],
            *command[command.index("run") :],
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]  # killed in epoch 1, mid-epoch
    assert list((cache / "resume").glob(f"{model}__*/last.ckpt"))  # the epoch-0 resume point
    assert not list((tmp_path / "killed").glob("*.json"))  # it died before writing a result
    again = subprocess.run(
        _command(model, tmp_path / "killed", cache), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming the training of {model}" in again.stderr
    a = json.loads((tmp_path / "straight" / f"{model}__synthetic__default.json").read_text())
    b = json.loads((tmp_path / "killed" / f"{model}__synthetic__default.json").read_text())
    assert b["metrics"] == a["metrics"] and b["per_query"] == a["per_query"]
    assert not list((cache / "resume").glob(f"{model}__*"))  # removed once the checkpoint is saved


def test_resume_never_discards_the_resume_point(tmp_path):
    from benchmark.resume import LAST, resume_from

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / LAST).write_bytes(b"x")
    assert resume_from(tmp_path / "r", "auto") == str(tmp_path / "r" / LAST)
    assert resume_from(tmp_path / "r", "never") is None and not (tmp_path / "r").exists()
    assert resume_from(tmp_path / "r", "auto") is None
