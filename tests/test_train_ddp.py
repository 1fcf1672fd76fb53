"""Training under DDP: gathered negatives give the single-process step; plain ``ddp`` trains ours.

* ``tests/ddp_train_script.py`` computes two training steps of CLIP, BLIP2 and ours (three
  configurations) on a fixed global batch in one process, and on its two halves in two gloo
  processes that gather their negatives across processes (``cross_rank``) with the gradients
  averaged as DDP does: losses and every parameter gradient agree. With ITM on, every
  trainable parameter gets a gradient on both processes.
* Lightning's ``strategy="ddp"`` (``find_unused_parameters=False``) fits ours over 2 CPU
  processes through the QScaler warm-up and past it (marked ``slow``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _env() -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])), OMP_NUM_THREADS="1",
               MASTER_ADDR="127.0.0.1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("MASTER_PORT", None)
    return env


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_train")
    proc = subprocess.run([sys.executable, str(TESTS / "ddp_train_script.py"), str(out)], cwd=out, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


@pytest.mark.parametrize("model", ["clip", "blip2", "ours", "ours_relevant", "ours_noqscaler"])
def test_two_processes_with_gathered_negatives_give_the_one_process_step(ddp_run, model):
    one, two = load_file(ddp_run / "one.safetensors"), load_file(ddp_run / "two.safetensors")
    keys = sorted(k for k in one if k.startswith(f"{model}/"))
    assert keys and keys == sorted(k for k in two if k.startswith(f"{model}/"))  # the same parameters got gradients
    assert {f"{model}/0/loss", f"{model}/1/loss"} <= set(keys)
    for key in keys:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    moved = [k for k in keys if "/grad/" in k and one[k].abs().max() > 0]
    assert len(moved) > 10  # real gradients were compared, not zeros


def test_every_trainable_parameter_gets_a_gradient_on_every_process(ddp_run):
    import json

    missing = json.loads((ddp_run / "two.json").read_text())["missing"]
    assert len(missing) == 2
    for rank in missing:
        assert rank == {name: [] for name in rank} and {"blip2_itm", "ours_itm", "ours"} <= set(rank)
