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

from datamodules.batch import TrainBatch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    env.pop("MASTER_PORT", None)
    return env


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_train")
    proc = subprocess.run(
        [sys.executable, str(TESTS / "ddp_train_script.py"), str(out)],
        cwd=out,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


@pytest.mark.parametrize("model", ["clip", "blip2", "ours", "ours_noqscaler"])
def test_two_processes_with_gathered_negatives_give_the_one_process_step(ddp_run, model):
    one, two = load_file(ddp_run / "one.safetensors"), load_file(ddp_run / "two.safetensors")
    keys = sorted(k for k in one if k.startswith(f"{model}/"))
    assert keys and keys == sorted(k for k in two if k.startswith(f"{model}/"))  # the same parameters got gradients
    assert {f"{model}/0/loss", f"{model}/1/loss"} <= set(keys)
    for key in keys:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    moved = [k for k in keys if "/grad/" in k and one[k].abs().max() > 0]
    assert len(moved) > 10  # real gradients were compared, not zeros


def test_selected_rows_are_the_gathered_rows_at_those_indices(ddp_run):
    import json

    assert json.loads((ddp_run / "two.json").read_text())["select"] == [True, True]


def test_every_trainable_parameter_gets_a_gradient_on_every_process(ddp_run):
    import json

    missing = json.loads((ddp_run / "two.json").read_text())["missing"]
    assert len(missing) == 2
    for rank in missing:
        assert rank == {name: [] for name in rank} and {"blip2_itm", "ours_itm", "ours"} <= set(rank)


def _fit_ours(tmp_path, root: Path) -> subprocess.CompletedProcess:
    from tests.tiny_blip2 import save_tiny_blip2, save_tiny_clip

    texts = [
        "find images of a red circle",
        "a large blue square left of a green star",
        "show me a yellow cross",
        "two purple triangles on a striped background",
    ]
    clip = save_tiny_clip(tmp_path / "clip", texts)
    save_tiny_blip2(tmp_path / "blip2", texts, 8, vision_checkpoint=str(clip))
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(root), env["PYTHONPATH"]])
    return subprocess.run(
        [sys.executable, str(root / "tests" / "ddp_fit_script.py"), str(tmp_path), str(tmp_path / "fit.json")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_plain_ddp_fits_ours_through_the_qscaler_warmup(tmp_path):
    import json

    proc = _fit_ours(tmp_path, ROOT)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    seen = json.loads((tmp_path / "fit.json").read_text())
    assert seen["world_size"] == 2 and seen["steps"] == 4  # 32 items, 2 processes x batches of 4
    assert seen["warm"] == [True, True, False, False]
    assert seen["head_moved"] == [False, False, True, True]  # no update in the warm-up, then it learns


# -- one process: what plain DDP needs, and the training numerics of before --------------------------
TEXTS = [
    "find images of a red circle",
    "a large blue square left of a green star",
    "show me a yellow cross",
    "two purple triangles on a striped background",
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny BLIP2 (4-layer tower, as the token-reduction models need) naming a tiny CLIP."""
    from tests.tiny_blip2 import save_tiny_blip2, save_tiny_clip

    root = tmp_path_factory.mktemp("ckpt")
    clip = save_tiny_clip(root / "clip", TEXTS)
    return save_tiny_blip2(
        root / "blip2", TEXTS, 8, vision_layers=4, image_size=32, k_test=2, vision_checkpoint=str(clip)
    )


def _model(name: str, ckpt: Path, **kw):
    from benchmark.registry import MODELS
    from lightning_modules.optim import OptimConfig

    torch.manual_seed(0)
    cls = MODELS.get(name)
    if name == "blip2":
        base = cls.load_checkpoint(ckpt)
        from dataclasses import replace

        return cls(base.vision_tower, base.head, base.tokenizer, replace(base.config, **kw))
    extra = {"l_base": 2, "l_max": 12, "l_init": 8, "cache_features": False} if name == "ours" else {}
    return cls.create(cls.Config(blip2_checkpoint=str(ckpt), **extra, **kw), OptimConfig())


def _step(model, images, warming_up: bool | None = None):
    """One ``_losses`` backward after the ``setup("fit")`` hook; the loss and every gradient."""
    model.setup("fit")
    model.train()
    if warming_up is not None:
        model._warming_up = lambda: warming_up
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss = model._losses(TrainBatch(torch.tensor([0, 1, 2, 0]), images, TEXTS))["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("name", "kw", "warming_up"),
    [
        ("blip2", {}, None),
        ("blip2", {"itm_weight": 0.0}, None),
        ("blip2", {"freeze_qformer": True}, None),
        ("ours", {}, True),
        ("ours", {}, False),
        ("ours", {"itm_weight": 0.0}, True),
        ("ours", {"qscaler": False}, None),
        ("dynamicvit", {}, None),
        ("dynamicvit", {"finetune_qformer": True}, None),
        ("dynamicvit", {"finetune_qformer": True, "itm_weight": 1.0}, None),
        ("crossget", {}, None),
        ("crossget", {"finetune_qformer": True}, None),
    ],
)
def test_every_trainable_parameter_takes_part_in_every_step(checkpoints, name, kw, warming_up):
    """What ``strategy="ddp"`` (no unused-parameter search) needs, in the configurations that
    used to leave some out: ours' QScaler warm-up, the ITM head with ``itm_weight=0``."""
    model = _model(name, checkpoints, **kw)
    pixels = name in ("dynamicvit", "crossget")
    images = torch.randn(4, 3, 32, 32) if pixels else torch.randn(4, 17, 32)
    _, grads = _step(model, images, warming_up)
    assert grads and [n for n, g in grads.items() if g is None] == []


def test_ours_warmup_step_is_the_former_step_and_the_optimizer_still_skips_the_qscaler_head(checkpoints):
    """In the warm-up the QScaler head now takes part with an exactly zero gradient: the loss
    and every other gradient are bitwise those of the former code path (the head's outputs
    detached), and ``on_before_optimizer_step`` drops the zeros, so AdamW (weight decay,
    moments, step count) skips the head as before."""
    tokens = torch.randn(4, 17, 32, generator=torch.Generator().manual_seed(3))
    model = _model("ours", checkpoints)
    loss, grads = _step(model, tokens, warming_up=True)
    former = _model("ours", checkpoints)
    former._length_inputs = lambda qs: (qs.r.detach(), qs.soft_length.detach())  # the code before the change
    former_loss, former_grads = _step(former, tokens, warming_up=True)
    assert torch.equal(loss, former_loss)
    head = {f"qscaler.head.{n}" for n, _ in model.qscaler.head.named_parameters()}
    assert head <= set(grads) and all(former_grads[n] is None and not grads[n].any() for n in head)
    assert {n for n, g in former_grads.items() if g is not None} == set(grads) - head
    for n in set(grads) - head:
        assert torch.equal(grads[n], former_grads[n]), n
    model.on_before_optimizer_step(None)
    assert all(p.grad is None for p in model.qscaler.head.parameters())
    assert model.bank.tokens.grad is not None  # only the head's are dropped
    model._warming_up = lambda: False  # after the warm-up the head keeps its gradient
    _step(model, tokens, warming_up=False)
    model.on_before_optimizer_step(None)
    assert model.qscaler.head.net[1].weight.grad.abs().sum() > 0


def test_itm_weight_zero_freezes_the_itm_head_only_when_fitting(checkpoints):
    model = _model("blip2", checkpoints, itm_weight=0.0)
    model.setup("test")
    assert model.head.itm_head.weight.requires_grad
    model.setup("fit")
    assert not model.head.itm_head.weight.requires_grad and model.head.text_projection.weight.requires_grad
    trained = _model("blip2", checkpoints)
    trained.setup("fit")
    assert trained.head.itm_head.weight.requires_grad


# -- the loss helpers: one process keeps its exact operations; blocks index the global batch ----------
def test_one_process_blocks_are_the_former_itc_and_itm_pairs():
    from lightning_modules.components.blip2_losses import batch_itc, itc_loss, itc_similarities, itm_pairs

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 3, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    index, temp = torch.tensor([0, 1, 2, 0, 3, 4]), torch.tensor(0.07)
    loss, blocks = batch_itc(img, txt, index, temp, 0.1)
    sim = itc_similarities(img, txt)
    positives = index[:, None] == index[None, :]
    assert torch.equal(loss, itc_loss(sim, temp, positives, 0.1)) and blocks.offset == 0
    assert torch.equal(blocks.sim_t2i, sim.T) and torch.equal(blocks.positives_t2i, positives.T)
    pairs = itm_pairs(sim, positives, torch.Generator().manual_seed(5), max_anchors=4)
    from lightning_modules.components.blip2_losses import itm_pairs_blocks

    same = itm_pairs_blocks(
        blocks.sim_i2t,
        blocks.sim_t2i,
        blocks.positives_i2t,
        blocks.positives_t2i,
        generator=torch.Generator().manual_seed(5),
        max_anchors=4,
    )
    assert all(torch.equal(a, b) for a, b in zip(pairs, same))


def test_itm_pairs_blocks_draw_negatives_from_the_global_batch_with_global_indices():
    from lightning_modules.components.blip2_losses import ItcBlocks, itm_pairs_blocks

    # process 1 of 2 holds global items 3..5; its items' only non-positives live on process 0
    positives = torch.zeros(3, 6, dtype=torch.bool)
    positives[:, 3:] = True
    blocks = ItcBlocks(torch.randn(3, 6), torch.randn(3, 6), positives, positives, offset=3)
    img, txt, labels = itm_pairs_blocks(blocks.sim_i2t, blocks.sim_t2i, positives, positives, blocks.offset)
    assert labels.tolist() == [1, 1, 1] + [0] * 6
    assert img[:3].tolist() == txt[:3].tolist() == [3, 4, 5]  # the positives: the local items, global indices
    assert img[:6].tolist() == [3, 4, 5, 3, 4, 5] and all(t < 3 for t in txt[3:6].tolist())  # negative texts
    assert all(i < 3 for i in img[6:].tolist()) and txt[6:].tolist() == [3, 4, 5]  # negative images
    local = blocks.local(slice(3, 6))  # DynamicViT's ITM: this process's columns only
    assert local.sim_i2t.shape == (3, 3) and local.offset == 0 and local.positives_i2t.all()


def test_global_batch_bookkeeping():
    from lightning_modules.components.cross_rank import GlobalBatch, global_batch

    b = GlobalBatch(rank=1, sizes=(4, 3, 5))
    assert (b.world, b.total, b.start, b.local) == (3, 12, 4, slice(4, 7))
    assert b.loss_scale == 3 * 3 / 12
    assert GlobalBatch(0, (4, 4)).loss_scale == 1.0
    assert global_batch(True, 4, "cpu") is None  # one process: nothing to gather, no collective


# -- the option -------------------------------------------------------------------------------------
def test_gather_negatives_is_recorded_and_leaves_existing_hashes_alone():
    from benchmark.config import build_run_config, model_defaults, parse_set, to_dict

    base = build_run_config(model_defaults("ours"))
    same = build_run_config(model_defaults("ours"), parse_set(["train.gather_negatives=true"]))
    off = build_run_config(model_defaults("ours"), parse_set(["train.gather_negatives=false"]))
    assert to_dict(base)["train"]["gather_negatives"] is True and to_dict(off)["train"]["gather_negatives"] is False
    assert "gather_negatives" not in base.identity()["train"]  # the identity of every config hashed before it
    assert (same.config_hash(), same.training_hash()) == (base.config_hash(), base.training_hash())
    assert off.training_hash() != base.training_hash() and off.config_hash() != base.config_hash()
    from benchmark.config import ConfigError

    with pytest.raises(ConfigError, match="gather_negatives"):
        build_run_config(model_defaults("ours"), parse_set(["train.gather_negatives=1"]))


def test_the_runner_hands_the_option_to_the_model_and_to_dependencies(monkeypatch, checkpoints):
    from benchmark import store, training
    from benchmark.config import build_run_config, model_defaults, parse_set

    cfg = build_run_config(model_defaults("ours"), parse_set(["train.gather_negatives=false"]))
    assert store.dependency_config(cfg, "blip2").train.gather_negatives is False
    fitted = []

    class Trainer:  # what fit_and_save asks of a Trainer; not rank 0, so nothing is saved
        is_global_zero, num_devices = False, 1
        strategy = type("S", (), {"root_device": torch.device("cpu"), "barrier": lambda self, name=None: None})()

        def fit(self, m, **kw):
            fitted.append(m)

    monkeypatch.setattr(training, "trainer", lambda *a, **kw: Trainer())
    model = _model("blip2", checkpoints)
    assert model.gather_negatives is True
    dm = type("DM", (), {"item_table": lambda self, split: None, "set_runtime": lambda self, r: None})()
    training.fit_and_save(cfg, model, dm, checkpoints.parent / "never-written", progress=False)
    assert fitted == [model] and model.gather_negatives is False
