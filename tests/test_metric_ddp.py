"""RetrievalMetric under real Lightning DDP (2 CPU processes, gloo) gives the 1-process numbers.

The helper script (``tests/ddp_metric_script.py``) runs ``Trainer.test`` on 37 images and 91
captions, sizes that a 2-process ``DistributedSampler`` must pad: the padded repeats must be
dropped, not counted twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.script_modules import load_script

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SCRIPT = TESTS / "ddp_metric_script.py"


def run_script(out: Path, devices: int, cwd: Path, *flags: str) -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    env.pop("MASTER_PORT", None)  # Lightning picks a free port
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), "--devices", str(devices), *flags],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, f"devices={devices} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text(encoding="utf-8"))


def load_script_module():
    return load_script(SCRIPT, register=True)


def test_ddp_two_processes_match_one_process(tmp_path):
    one = run_script(tmp_path / "one.json", 1, tmp_path)
    two = run_script(tmp_path / "two.json", 2, tmp_path)
    assert one["world_size"] == 1 and two["world_size"] == 2
    script = load_script_module()
    # padding really happened (37 -> 2 x 19, 91 -> 2 x 46) and was dropped
    assert two["seen"] == {"images": 38, "texts": 92}
    assert two["n_duplicates"] == {"images": 1, "texts": 1}
    assert one["n_duplicates"] == {"images": 0, "texts": 0}
    assert two["metrics"]["t2i/n_queries"] == script.N_CAPTIONS
    assert two["metrics"]["i2t/n_queries"] == script.N_IMAGES
    assert two["metrics"]["t2i/n_skipped"] == 0
    assert two["metrics"] == one["metrics"]
    assert two["t2i_rank"] == one["t2i_rank"]
    # two ranks gather out of index order: once sorted, the gathered states are let go (the gallery
    # is held once while scoring); one process keeps its own states, in order, uncopied
    assert two["released"] == {"image": True, "text": True} and one["released"] == {"image": False, "text": False}
    assert two["text_lengths"] == [i % 3 + 1 for i in range(script.N_CAPTIONS)]
    reference = script.reference_metrics()
    assert set(one["metrics"]) - set(reference) == {"index/bytes", "index/bytes_per_image"}
    assert one["metrics"]["index/bytes"] == script.N_IMAGES * one["metrics"]["index/bytes_per_image"]
    for key, value in reference.items():
        assert one["metrics"][key] == pytest.approx(value), key


def test_spilled_extras_under_two_processes_match_one_process_in_memory(tmp_path):
    """Each rank writes its images' rows into one shared file (no gather); the score reads them."""
    one = run_script(tmp_path / "one.json", 1, tmp_path, "--extras")
    spill = tmp_path / "spill"
    two = run_script(tmp_path / "two.json", 2, tmp_path, "--spill", str(spill))
    assert one["spilled"] == [] and "image_extra_tok" in one["gathered_states"]
    assert two["spilled"] == ["image_emb", "image_extra_tok", "text_emb"]
    assert "image_extra_tok" not in two["gathered_states"]
    assert two["n_duplicates"] == {"images": 1, "texts": 1}
    assert two["metrics"] == one["metrics"] and two["t2i_rank"] == one["t2i_rank"]
    assert two["spill_files_left"] == [] and not any(spill.iterdir())  # removed once every rank scored
    # as if on two machines: page-aligned rows, flushed, done-files checked; embeddings (far below a
    # page) stay gathered
    machines = run_script(tmp_path / "machines.json", 2, tmp_path, "--spill", str(spill), "--several-machines")
    assert machines["spilled"] == ["image_extra_tok"]
    assert machines["metrics"] == one["metrics"] and not any(spill.iterdir())
    # the rows matter: the plain score gives other numbers
    plain = run_script(tmp_path / "plain.json", 1, tmp_path)
    assert plain["metrics"]["t2i/MRR"] != one["metrics"]["t2i/MRR"]
