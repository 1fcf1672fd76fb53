"""CUDA checks of the BLIP2 family (marked ``gpu``: deselected by default, skipped without a
device; run them with ``pytest -m gpu`` on a machine with one).

CI has no GPU, so these are the suite's only check that the models keep every tensor on the
model's device: scores and lengths on CUDA equal the CPU model's, nested attention still gives
an L-query pass exactly, and a few training steps (QScaler, soft mask, oracle queue, ITM hard
negatives, usage-ordered bank) run and learn on CUDA.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any cuBLAS handle, as Lightning sets it

import pytest
import torch

from datamodules.batch import TrainBatch
from lightning_modules.blip2 import Blip2Retrieval
from lightning_modules.components.query_attention import qformer_query_forward
from tests.test_idq_former import LMAX, NQ, TEXTS, _ours, save_blip2_checkpoint
from tests.test_idq_former import _pixels as _tokens

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
    """TF32 would make CUDA and CPU differ by ~1e-3; the comparisons below are in true fp32."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def blip2_checkpoint(tmp_path_factory):
    """The tiny BLIP2 checkpoint of tests/test_idq_former.py, built the same way."""
    return save_blip2_checkpoint(tmp_path_factory.mktemp("blip2"))


@pytest.mark.parametrize("model", ["blip2", "ours"])
def test_scores_and_lengths_on_cuda_equal_the_cpu_models(blip2_checkpoint, model):
    cpu = (Blip2Retrieval.load_checkpoint(blip2_checkpoint) if model == "blip2" else _ours(blip2_checkpoint)).eval()
    if model == "ours":
        with torch.no_grad():
            cpu.qscaler.head.net[-1].weight.normal_(0, 0.5)  # lengths that differ between the texts
    gpu = copy.deepcopy(cpu).to(CUDA)
    with torch.no_grad():
        c_img, c_txt = cpu.encode_images(_tokens(3)), cpu.encode_texts(TEXTS)
        g_img, g_txt = gpu.encode_images(_tokens(3).to(CUDA)), gpu.encode_texts(TEXTS)
        c_scores = [cpu.score(c_txt, c_img), cpu.score(c_img, c_txt), cpu.score(c_img, c_img)]
        g_scores = [gpu.score(g_txt, g_img), gpu.score(g_img, g_txt), gpu.score(g_img, g_img)]
    assert g_img.emb.device.type == "cuda" and g_txt.emb.device.type == "cuda"
    if model == "ours":
        assert torch.equal(g_txt.lengths.cpu(), c_txt.lengths) and len(set(c_txt.lengths.tolist())) > 1
    for g, c in zip(g_scores, c_scores):
        torch.testing.assert_close(g.cpu(), c, atol=1e-4, rtol=1e-4)


def test_nested_attention_gives_an_l_query_pass_on_cuda(blip2_checkpoint):
    m = _ours(blip2_checkpoint).to(CUDA).eval()
    with torch.no_grad():
        tokens = m.vision_tokens(_tokens(4).to(CUDA))
        full = m.query_outputs(tokens)
        for n in (1, 5, LMAX):
            part = qformer_query_forward(m.head.qformer, m.bank(n), tokens, mode="nested")
            torch.testing.assert_close(full[:, :n], part, atol=1e-5, rtol=0)


@pytest.mark.parametrize("deterministic", [False, True])
def test_a_few_training_steps_run_and_learn_on_cuda(blip2_checkpoint, deterministic):
    """``deterministic``: as ``bench run`` trains (``train.deterministic``, Lightning's
    ``torch.use_deterministic_algorithms``), which refuses CUDA ops without a deterministic kernel."""
    torch.use_deterministic_algorithms(deterministic)
    try:
        _train_a_few_steps(blip2_checkpoint)
    finally:
        torch.use_deterministic_algorithms(False)


def _train_a_few_steps(ckpt) -> None:
    m = _ours(ckpt, bank_order="usage", oracle_queue=6).to(CUDA).train()
    params = [p for p in [*m.head.parameters(), *m.bank.parameters(), *m.qscaler.head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    batch = TrainBatch(torch.tensor([0, 1, 2, 3], device=CUDA), _tokens(4).to(CUDA), TEXTS)
    first = None
    for step in range(5):
        losses = m._losses(
            batch if step % 2 == 0 else TrainBatch(batch.index + 4, batch.items, batch.texts)
        )  # fresh indices fill the queue
        assert {"itc", "itm", "length", "oracle"} <= set(losses)
        opt.zero_grad()
        losses["loss"].backward()
        first = losses["loss"].item() if first is None else first
        assert m.qscaler.head.net[1].weight.grad.abs().sum() > 0
        opt.step()
    assert m._queue is not None and m._queue[1].device.type == "cuda"
    assert sorted(m.bank_usage["order"]) == list(range(NQ))
    assert losses["loss"].item() < first
