"""scripts/gpu_eval_check.sh and its helpers on the CPU: the COCO-Karpathy stand-in read back by
the suite's own loader, the half-precision random checkpoint loading as float32, the run
wrapper and the summary, and (slow) the whole script end to end in ``--cpu-smoke`` mode."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_eval_check.sh"
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_eval  # noqa: E402
import random_checkpoints  # noqa: E402
import random_coco  # noqa: E402


def _env(**extra: str) -> dict:
    env = dict(os.environ, PYTHON=sys.executable, **extra)
    env.pop("GPU_EVAL_CPU_SMOKE", None)
    return env


# -- the COCO-Karpathy stand-in ------------------------------------------------------------
def test_random_coco_is_read_by_the_coco_loader(tmp_path):
    from datamodules.coco import CocoKarpathyDataModule
    from datamodules.datamodule import DataConfig

    spec = random_coco.CocoSpec(n_test=6, n_val=2, n_train=3, n_restval=1, captions_per_image=5, image_size=48)
    info = random_coco.write_coco(tmp_path / "coco", spec, workers=2)
    assert info["images"] == 12 and info["per_split"] == {"test": 6, "val": 2, "train": 3, "restval": 1}
    doc = json.loads((tmp_path / "coco" / "dataset_coco.json").read_text())
    assert doc["dataset"] == "coco" and any(s["raw"].endswith(" ") for e in doc["images"] for s in e["sentences"])
    first = doc["images"][0]
    assert first["filename"] == f"COCO_val2014_{first['cocoid']:012d}.jpg" and first["filepath"] == "val2014"
    assert first["sentids"] == [s["sentid"] for s in first["sentences"]]
    assert all(s["tokens"] == s["raw"].split() for e in doc["images"] for s in e["sentences"])

    dm = CocoKarpathyDataModule(DataConfig(root=str(tmp_path / "coco")))
    assert dm.layout() == "karpathy"
    test = dm.records("test")
    assert len(test) == 6 and all(len(r.captions) == 5 for r in test)
    assert all(not c.text.endswith(" ") and 7 <= len(c.text.split()) <= 17 for r in test for c in r.captions)
    assert len(dm.records("train")) == 4 and len(dm.records("val")) == 2  # train = train + restval
    assert dm.skipped() == []
    with Image.open(test[0].path) as im:
        assert im.format == "JPEG" and im.size == (48, 48) and im.mode == "RGB"
    captions = [c.text for r in test for c in r.captions]
    assert len(set(captions)) > 25  # varied sentences


def test_random_coco_depends_on_the_seed_only(tmp_path):
    spec = random_coco.CocoSpec(n_test=5, n_val=1, n_train=1, n_restval=0, image_size=32)

    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
        return h.hexdigest()

    random_coco.write_coco(tmp_path / "a", spec, workers=1)
    random_coco.write_coco(tmp_path / "b", spec, workers=3)
    random_coco.write_coco(
        tmp_path / "c",
        random_coco.CocoSpec(n_test=5, n_val=1, n_train=1, n_restval=0, image_size=32, seed=1),
        workers=1,
    )
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    assert not list((tmp_path / "a").rglob(".*.tmp"))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"n_test": 0}, "n_test"),
        ({"image_size": 8}, "image_size"),
        ({"quality": 100}, "quality"),
        ({"n_restval": -1}, "n_restval"),
    ],
)
def test_coco_spec_is_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        random_coco.CocoSpec(**bad)


# -- the random checkpoint -----------------------------------------------------------------
def test_half_precision_checkpoint_loads_as_float32_like_the_hub_file(tmp_path):
    from safetensors.torch import load_file

    from lightning_modules.blip2 import load_pretrained_parts

    scale = random_checkpoints.SCALES["tiny"]
    info = random_checkpoints.write_blip2(
        tmp_path / "half", scale, "cpu", save_dtype="float16", vocab_texts=random_coco.vocabulary()
    )
    random_checkpoints.write_blip2(tmp_path / "full", scale, "cpu", vocab_texts=random_coco.vocabulary())
    stored = load_file(tmp_path / "half" / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    assert json.loads((tmp_path / "half" / "config.json").read_text())["dtype"] == "float32"
    assert info["save_dtype"] == "float16" and info["vocabulary"] > len(random_coco.WORDS)
    assert random_checkpoints.folder_bytes(tmp_path / "half") < random_checkpoints.folder_bytes(tmp_path / "full")
    tower, head, tok = load_pretrained_parts(str(tmp_path / "half"))
    assert {p.dtype for m in (tower, head) for p in m.parameters()} == {torch.float32}
    full = load_file(tmp_path / "full" / "model.safetensors")
    assert full.keys() == stored.keys()  # the same seeded weights, rounded to float16
    assert all(torch.equal(full[k].half(), stored[k]) for k in full)
    assert tok.unk_token_id not in tok("Find an image of a red dog sitting near the bench")["input_ids"]
    with pytest.raises(ValueError, match="save_dtype"):
        random_checkpoints.write_blip2(tmp_path / "x", scale, "cpu", save_dtype="int8")


# -- the helper: run wrapper and summary --------------------------------------------------
def test_prepare_run_and_summary_in_process(tmp_path, monkeypatch):
    """The Python steps of the script (blip2 only, 12 images): a real full-size-path run on the
    random checkpoint and the stand-in, recorded, then summarised."""
    monkeypatch.setenv("INSTRUCTSEE_CACHE", str(tmp_path / "cache"))
    out, work = tmp_path / "out", tmp_path / "work"
    gpu_eval.main(
        [
            "prepare",
            "--scale",
            "tiny",
            "--work",
            str(work),
            "--out",
            str(out),
            "--n-test",
            "12",
            "--image-size",
            "40",
            "--workers",
            "1",
            "--device",
            "cpu",
        ]
    )
    prep = json.loads((out / "prepare.json").read_text())
    assert prep["dataset"]["per_split"]["test"] == 12 and prep["checkpoint"]["save_dtype"] == "float32"
    assert prep["generate_s"] > 0 and prep["model_save_s"] > 0 and prep["checkpoint"]["bytes"] > 0
    result = out / "results" / "blip2__coco__t.json"
    record = gpu_eval.run_bench(
        "blip2",
        [
            "run",
            "--model",
            "blip2",
            "--dataset",
            "coco",
            "--size",
            "full",
            "--pretrained",
            str(work / "blip2"),
            "--epochs",
            "0",
            "--data-root",
            str(work / "coco"),
            "--tag",
            "t",
            "--results-dir",
            str(out / "results"),
            "--no-progress",
            "--set",
            "eval.measure=false",
        ],
        out,
        str(result),
    )
    assert record["rc"] == 0 and record["error"] is None, record
    assert record["peak_allocated_mb"] is None  # no CUDA allocator on a CPU
    res = json.loads(result.read_text())
    assert res["provenance"]["n_gallery_images"] == 12 and res["provenance"]["n_queries"] == 60
    # full size: the frozen features cached in fp16 and the gallery stored in fp16 (the CPU evaluates in fp32)
    assert res["provenance"]["features"]["test"]["dtype"] == "float16"
    assert res["evaluation"] == {"precision": "32-true", "storage_dtype": "float16", "world_size": 1}
    failed = gpu_eval.run_bench("nope", ["run", "--model", "nope"], out)  # recorded, not raised
    assert failed["rc"] == 2
    report = gpu_eval.summary(
        gpu_eval.parse_args(["summary", "--out", str(out), "--device-label", "cpu", "--order", "nope,blip2"])[0]
    )
    rows = {r["model"]: r for r in report["runs"]}
    assert [r["model"] for r in report["runs"]] == ["nope", "blip2"]
    assert rows["nope"]["verdict"] == "CRASH" and rows["blip2"]["verdict"] == "PASS"
    assert rows["blip2"]["k_test"] == 128  # the full-size default re-ranking depth
    assert 0 <= rows["blip2"]["t2i_R@1"] <= 1 and 0 <= rows["blip2"]["i2t_R@1"] <= 1
    assert rows["blip2"]["stages"]["score_and_rank_s"] > 0 and rows["blip2"]["stages"]["encode_images_s"] > 0
    md = (out / "summary.md").read_text()
    assert "| blip2 | " in md and "| PASS |" in md and "| CRASH |" in md


def test_summary_verdict_follows_the_target(tmp_path):
    result = tmp_path / "r.json"
    result.write_text(
        json.dumps(
            {
                "model": "blip2",
                "metrics": {"t2i/R@1": 0.25},
                "timings": {"total_s": 50.0},
                "model_config": {"pretrained": "x"},
                "provenance": {},
            }
        )
    )
    run = {"name": "blip2", "rc": 0, "wall_s": 60.0, "result_file": str(result)}
    assert gpu_eval.run_row(run, target_s=60.0)["verdict"] == "PASS"
    assert gpu_eval.run_row(run, target_s=59.9)["verdict"] == "FAIL"
    assert gpu_eval.run_row(run | {"rc": 1}, target_s=900)["verdict"] == "CRASH"
    assert gpu_eval.run_row(run | {"result_file": str(tmp_path / "missing.json")}, 900)["verdict"] == "CRASH"
    assert gpu_eval.run_row(run, 900)["k_test"] == 128


# -- the shell script ----------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_script_refuses_a_machine_without_cuda(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_script_refuses_unknown_options(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out"), "--fast"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown option --fast" in proc.stderr


@pytest.mark.slow
def test_cpu_smoke_end_to_end(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--cpu-smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(EVAL_SETS="", N_TEST="12", WORK_DIR=str(tmp_path / "work"), INSTRUCTSEE_CACHE=str(tmp_path / "cache")),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("versions.txt", "nvidia_smi.txt", "prepare.json", "summary.md", "summary.json"):
        assert (out / name).is_file(), name
    stages = [line.split("\t") for line in (out / "stage_times.tsv").read_text().splitlines()]
    assert [s[0] for s in stages] == ["prepare", "bench run blip2", "bench run ours"]
    assert all(float(s[1]) > 0 and s[2] == "0" for s in stages)
    for model in ("blip2", "ours"):
        run = json.loads((out / "runs" / f"{model}.json").read_text())
        assert run["rc"] == 0 and run["wall_s"] > 0, run
        res = json.loads((out / "results" / f"{model}__coco__gpueval.json").read_text())
        assert res["size"] == "full" and res["provenance"]["n_gallery_images"] == 12
        assert res["provenance"]["n_queries"] == 60
        for key in ("t2i/R@1", "i2t/R@1"):
            assert 0 <= res["metrics"][key] <= 1, (model, key)
        assert res["timings"]["score_and_rank_s"] > 0 and res["timings"]["encode_texts_s"] > 0
    md = (out / "summary.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith(("| blip2 |", "| ours |"))]
    assert len(rows) == 2 and all("| PASS |" in r and "| 128 |" in r for r in rows), md
    assert "12 / 60" in md
