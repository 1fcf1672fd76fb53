"""``train.grad_checkpointing`` per model, on tiny random models on the CPU: one training step
(``training_step`` then ``backward``) gives the same loss and parameter gradients with activation
checkpointing as without (to 1e-6), while the autograd graph saves fewer bytes of activations
(counted with ``torch.autograd.graph.saved_tensors_hooks``: non-reentrant checkpointing keeps
the tensors saved inside a checkpointed layer out of the graph and recomputes them); plus the
seam the runner uses and the config field."""

from __future__ import annotations

import warnings

import pytest
import torch

from benchmark.config import ConfigError, RunConfig, TrainConfig
from datamodules.batch import TrainBatch
from lightning_modules.blip2 import Blip2Retrieval
from lightning_modules.clip import ClipConfig, ClipRetrieval
from lightning_modules.crossget_model import CrossGETConfig, CrossGETRetrieval
from lightning_modules.dynamicvit_model import DynamicViTConfig, DynamicViTRetrieval
from lightning_modules.grad_checkpointing import OPTION, enable_grad_checkpointing
from lightning_modules.idq_former import IdqConfig, IdqFormerRetrieval
from lightning_modules.optim import OptimConfig
from tests.tiny_blip2 import save_tiny_blip2, save_tiny_clip

TEXTS = [
    "find images of a red circle",
    "a large blue square left of a green star on a striped background",
    "show me a yellow cross",
    "two purple triangles above a small circle",
]
IMAGE = 32


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc")
    clip = save_tiny_clip(root / "clip", TEXTS)
    blip2 = save_tiny_blip2(root / "blip2", TEXTS, 8, vision_layers=4, image_size=IMAGE, vision_checkpoint=str(clip))
    return {"clip": clip, "blip2": blip2}


def _clip(ckpts):
    return ClipRetrieval.create(
        ClipConfig(
            image_size=IMAGE,
            patch_size=8,
            vision_width=32,
            vision_layers=3,
            text_width=32,
            text_layers=2,
            heads=2,
            embed_dim=16,
        ),
        OptimConfig(),
        TEXTS,
    )


def _blip2(ckpts):
    return Blip2Retrieval.load_checkpoint(ckpts["blip2"])


def _ours(ckpts):
    return IdqFormerRetrieval.create(
        IdqConfig(blip2_checkpoint=str(ckpts["blip2"]), l_base=2, l_max=12, l_init=8, cache_features=False),
        OptimConfig(),
    )


def _dynamicvit(ckpts, **kw):
    return DynamicViTRetrieval.create(DynamicViTConfig(blip2_checkpoint=str(ckpts["blip2"]), **kw), OptimConfig())


def _crossget(ckpts, **kw):
    return CrossGETRetrieval.create(
        CrossGETConfig(blip2_checkpoint=str(ckpts["blip2"]), r=2, cross_token_visible=True, **kw), OptimConfig()
    )


BUILDERS = {
    "clip": _clip,
    "blip2": _blip2,
    "ours": _ours,
    "dynamicvit": _dynamicvit,
    "crossget": _crossget,
    "dynamicvit_qformer": lambda c: _dynamicvit(c, finetune_qformer=True, itm_weight=1.0),
    "crossget_qformer": lambda c: _crossget(c, finetune_qformer=True),
}


def _batch():
    """Pixels for every model (the BLIP2 family's tower is frozen: pixels reach the same path as cached tokens)."""
    return TrainBatch(
        torch.arange(4), torch.randn(4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3)), TEXTS
    )


def _step(model, *, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    """One training step: (loss, gradients of the trainable parameters, bytes the graph saved)."""
    if checkpointing:
        enable_grad_checkpointing(model)
    model.train()
    saved: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[(t.data_ptr(), tuple(t.shape), t.dtype)] = t.numel() * t.element_size()
        return t

    torch.manual_seed(7)  # dropout, Gumbel noise
    with warnings.catch_warnings():  # self.log without a Trainer
        warnings.simplefilter("ignore")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model.training_step(_batch(), 0)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, sum(saved.values())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_checkpointing_keeps_loss_and_gradients_and_saves_fewer_activations(checkpoints, name):
    torch.manual_seed(0)
    plain = BUILDERS[name](checkpoints)
    torch.manual_seed(0)
    checked = BUILDERS[name](checkpoints)
    loss, grads, saved = _step(plain, checkpointing=False)
    loss_c, grads_c, saved_c = _step(checked, checkpointing=True)
    assert loss_c == pytest.approx(loss, abs=1e-6)
    assert grads and grads.keys() == grads_c.keys()
    for k in grads:
        torch.testing.assert_close(grads_c[k], grads[k], atol=1e-6, rtol=1e-5, msg=k)
    assert any(g.abs().sum() > 0 for g in grads.values())
    print(f"{name}: saved bytes {saved} -> {saved_c} ({saved_c / saved:.2f}x)")
    assert saved_c < 0.9 * saved, (saved_c, saved)


def test_checkpointing_restores_dropout_so_a_qformer_with_dropout_gets_the_same_gradients(checkpoints):
    def build():
        torch.manual_seed(0)
        m = _blip2(checkpoints)
        for module in m.head.qformer.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.3
        return m

    loss, grads, _ = _step(build(), checkpointing=False)
    loss_c, grads_c, _ = _step(build(), checkpointing=True)
    assert loss_c == pytest.approx(loss, abs=1e-6)
    for k in grads:
        torch.testing.assert_close(grads_c[k], grads[k], atol=1e-6, rtol=1e-5, msg=k)


def test_evaluation_is_unchanged_by_the_option(checkpoints):
    torch.manual_seed(0)
    plain = _dynamicvit(checkpoints)
    torch.manual_seed(0)
    checked = _dynamicvit(checkpoints)
    enable_grad_checkpointing(checked)
    px = _batch().items
    with torch.no_grad():
        assert torch.equal(plain.eval().encode_images(px).emb, checked.eval().encode_images(px).emb)


def test_a_model_without_the_seam_is_refused_naming_the_option_and_the_model():
    with pytest.raises(ConfigError, match=rf"{OPTION}.*'vqa'"):
        enable_grad_checkpointing(torch.nn.Linear(2, 2), "vqa", error=ConfigError)


def test_the_config_field_is_validated_and_left_out_of_the_hash_when_off():
    assert TrainConfig().grad_checkpointing is False
    with pytest.raises(ConfigError, match="train.grad_checkpointing"):
        TrainConfig(grad_checkpointing=1)  # type: ignore[arg-type]
    off = RunConfig(model="blip2", dataset="synthetic")
    on = RunConfig(model="blip2", dataset="synthetic", train=TrainConfig(grad_checkpointing=True))
    assert "grad_checkpointing" not in off.identity()["train"]
    assert on.identity()["train"]["grad_checkpointing"] is True and on.config_hash() != off.config_hash()


class _Stop(Exception):
    pass


class _StopAtData:
    def item_table(self, split):
        raise _Stop


def test_the_runner_calls_the_seam_before_fitting_and_refuses_a_model_without_it(tmp_path):
    from benchmark.training import fit_and_save as _fit_and_save

    calls = []

    class WithSeam(torch.nn.Module):
        def enable_grad_checkpointing(self):
            calls.append("on")

    cfg = RunConfig(model="vqa", train=TrainConfig(grad_checkpointing=True))
    with pytest.raises(ConfigError, match=rf"{OPTION} is true but model 'vqa'"):
        _fit_and_save(cfg, torch.nn.Linear(2, 2), _StopAtData(), tmp_path / "ckpt", progress=False)
    with pytest.raises(_Stop):  # the seam ran, then the fit went on (to the data)
        _fit_and_save(cfg, WithSeam(), _StopAtData(), tmp_path / "ckpt", progress=False)
    assert calls == ["on"]
    with pytest.raises(_Stop):  # off: not called
        _fit_and_save(RunConfig(model="vqa"), WithSeam(), _StopAtData(), tmp_path / "ckpt", progress=False)
    assert calls == ["on"]
