"""scripts/gpu_train_check.sh and scripts/gpu_train.py on the CPU: the refusal without CUDA, the
summary's targets, the batches as the runner's collate gives them, and (slow) the whole script end
to end in ``--cpu-smoke`` mode (every model trained by a Lightning Trainer, with and without
``train.grad_checkpointing``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_train_check.sh"
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_train  # noqa: E402


def _env(**extra: str) -> dict:
    env = dict(os.environ, PYTHON=sys.executable, **extra)
    env.pop("GPU_TRAIN_CPU_SMOKE", None)
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_machine_without_cuda_is_refused(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=300
    )
    assert proc.returncode == 2 and "--cpu-smoke" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_refused(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "a"), "--fast"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown option --fast" in proc.stderr
    with pytest.raises(SystemExit):
        gpu_train.parse_args(
            [
                "model",
                "--name",
                "ours",
                "--work",
                "w",
                "--out",
                "o",
                "--device",
                "cpu",
                "--image-size",
                "32",
                "--batch",
                "0",
            ]
        )


def test_batches_have_the_training_layout():
    batches = gpu_train.RandomBatches(2, 4, (5, 8), torch.float16)
    b = batches[1]
    index, images, texts, relevant = b.index, b.items, b.texts, b.relevant
    assert index.tolist() == [4, 5, 6, 7] and relevant.tolist() == [[4], [5], [6], [7]]
    assert images.shape == (4, 5, 8) and images.dtype == torch.float16 and len(texts) == 4 == len(set(texts))
    assert torch.equal(batches[1].items, images) and not torch.equal(batches[0].items, images)
    with pytest.raises(IndexError):
        batches[2]


def _setting(model: str, on: bool, peak_mb: float | None, status: str = "ok") -> dict:
    return {
        "model": model,
        "grad_checkpointing": on,
        "status": status,
        "peak_allocated_mb": peak_mb,
        "steps_per_s": 2.0,
        "median_step_s": 0.5,
        "input_shape": [32, 257, 1408],
        "input_dtype": "float16",
        "error": None if status == "ok" else "CUDA out of memory",
    }


def test_summary_targets(tmp_path):
    gb = 1e9 / 2**20  # MB per GB
    runs = {
        "blip2": [_setting("blip2", False, 20 * gb), _setting("blip2", True, 10 * gb)],
        "ours": [_setting("ours", False, 21 * gb), _setting("ours", True, 12 * gb)],
        "dynamicvit": [_setting("dynamicvit", False, 90 * gb, "oom"), _setting("dynamicvit", True, 79 * gb)],
        "crossget": [_setting("crossget", False, 85 * gb), _setting("crossget", True, 81 * gb)],
    }
    for name, settings in runs.items():
        gpu_train.write_json(tmp_path / "runs" / f"{name}.json", {"model": name, "settings": settings})
    args = gpu_train.parse_args(
        [
            "summary",
            "--out",
            str(tmp_path),
            "--device-label",
            "NVIDIA H100",
            "--order",
            "clip,blip2,ours,dynamicvit,crossget",
        ]
    )
    doc = gpu_train.summary(args)
    t = doc["targets"]
    assert t["blip2 trains at batch 32 within 80 GB"].startswith("PASS (10.0 GB")
    assert t["dynamicvit trains at batch 32 within 80 GB"].startswith("PASS (79.0 GB")
    assert t["crossget trains at batch 32 within 80 GB"].startswith("FAIL (81.0 GB")
    assert t["clip trains at batch 32 within 80 GB"] == "FAIL (not run)"
    assert t["ours' peak memory <= 1.1 x BLIP2's (grad_checkpointing off)"] == "PASS (1.050x)"
    assert t["ours' peak memory <= 1.1 x BLIP2's (grad_checkpointing on)"] == "FAIL (1.200x)"
    md = (tmp_path / "summary.md").read_text()
    assert "| dynamicvit | off | float16 [32, 257, 1408] | oom | 90.00 |" in md and "## Errors" in md


@pytest.mark.slow
def test_cpu_smoke_end_to_end(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--cpu-smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(WORK_DIR=str(tmp_path / "work"), INSTRUCTSEE_CACHE=str(tmp_path / "cache")),
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("versions.txt", "nvidia_smi.txt", "prepare.json", "summary.md", "summary.json"):
        assert (out / name).is_file(), name
    models = list(gpu_train.MODELS)
    stages = [line.split("\t") for line in (out / "stage_times.tsv").read_text().splitlines()]
    assert [s[0] for s in stages] == ["prepare", *(f"train {m}" for m in models)]
    assert all(float(s[1]) > 0 and s[2] == "0" for s in stages)
    prepare = json.loads((out / "prepare.json").read_text())
    assert prepare["blip2"]["vision_layers"] == 4 and prepare["clip"]["image_size"] == 32
    for model in models:
        run = json.loads((out / "runs" / f"{model}.json").read_text())
        assert [s["grad_checkpointing"] for s in run["settings"]] == [False, True]
        for s in run["settings"]:
            assert s["status"] == "ok", s
            assert len(s["step_times_s"]) == 3 and s["steps_per_s"] > 0 and s["trainable_parameters"] > 0
            assert s["batch"] == 8 and s["input_shape"][0] == 8
            tokens = model in ("blip2", "ours")
            assert s["input_shape"] == ([8, 17, 32] if tokens else [8, 3, 32, 32]), s
    doc = json.loads((out / "summary.json").read_text())
    assert len(doc["rows"]) == 2 * len(models) and all(r["status"] == "ok" for r in doc["rows"])
    assert all(v.startswith("n/a") for v in doc["targets"].values())  # no CUDA: memory not measured
    md = (out / "summary.md").read_text()
    assert md.count("| ok |") == 2 * len(models) and "CPU (--cpu-smoke" in md
