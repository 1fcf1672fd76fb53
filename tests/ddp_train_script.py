"""Helper for ``tests/test_train_ddp.py``: one training step's loss and gradients, 1 process vs 2.

Usage: ``python tests/ddp_train_script.py OUT_DIR`` (the repository root importable, e.g. via
``PYTHONPATH``). The parent process builds the tiny checkpoints, computes every model's loss
and parameter gradients on the whole global batch in one process (no process group: the
code path of single-process training), then spawns 2 gloo processes that each take half of
the batch, gather the negatives (``cross_rank``), run backward and average the gradients over
the processes as DDP does. Both are written to ``OUT_DIR`` as safetensors (``one.safetensors``,
``two.safetensors``: ``<model>/<step>/loss`` and ``<model>/<step>/grad/<parameter>``), with
``two.json`` listing, per process, the trainable parameters left without a gradient.

The batches hold repeated images across the two halves (same-image items are positives across
processes) and, for ours, a relevance column of different widths on the two processes. Two
steps per model, so ours' oracle queue (filled by the first) joins the second. ITM is off in
the comparison (its hard negatives are sampled); ``*_itm`` models run it under gathering and
only check that every trainable parameter gets a gradient.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from datamodules.batch import TrainBatch
from lightning_modules.blip2 import Blip2Retrieval
from lightning_modules.clip import ClipConfig, ClipRetrieval
from lightning_modules.components.cross_rank import GlobalBatch
from lightning_modules.idq_former import IdqConfig, IdqFormerRetrieval
from lightning_modules.optim import OptimConfig
from tests.tiny_blip2 import save_tiny_blip2, save_tiny_clip

TEXTS = [
    "find images of a red circle",
    "a large blue square left of a green star",
    "show me a yellow cross",
    "two purple triangles on a striped background",
    "a small green circle",
    "find a red square",
    "three stars above a blue circle",
    "a shape on a plain background",
]
#: the global batches (split indices; same-image items on both halves) and their relevance columns
STEPS = [torch.tensor([0, 1, 2, 3, 4, 1, 5, 0]), torch.tensor([6, 7, 2, 8, 9, 6, 3, 10])]
RELEVANT = [
    torch.tensor([[0, 4], [1, -1], [2, 5], [3, -1], [4, -1], [1, -1], [5, -1], [0, -1]]),
    torch.tensor([[6, 2], [7, -1], [2, -1], [8, 9], [9, -1], [6, -1], [3, -1], [10, -1]]),
]
N_IMAGES, NQ, LMAX = 11, 8, 12
WORLD = 2


def build(name: str, ckpt: Path) -> torch.nn.Module:
    """A tiny model, the same on every process (seeded)."""
    torch.manual_seed(0)
    if name == "clip":
        return ClipRetrieval.create(
            ClipConfig(
                image_size=16,
                patch_size=8,
                vision_width=32,
                vision_layers=1,
                text_width=32,
                text_layers=1,
                heads=2,
                embed_dim=16,
            ),
            OptimConfig(),
            TEXTS,
        )
    if name.startswith("blip2"):
        base = Blip2Retrieval.load_checkpoint(ckpt / "blip2")
        itm = 1.0 if name.endswith("_itm") else 0.0
        return Blip2Retrieval(
            base.vision_tower, base.head, base.tokenizer, replace(base.config, itm_weight=itm, itm_max_anchors=3)
        )
    extra = {"ours": {}, "ours_itm": {"itm_weight": 1.0, "itm_max_anchors": 3}, "ours_noqscaler": {"qscaler": False}}[
        name
    ]
    cfg = IdqConfig(
        blip2_checkpoint=str(ckpt / "blip2"),
        l_base=2,
        l_max=LMAX,
        l_init=NQ,
        noise_std=0.0,
        oracle_queue=16,
        cache_features=False,
        **({"itm_weight": 0.0} | extra),
    )
    return IdqFormerRetrieval.create(cfg, OptimConfig())


def batch(name: str, step: int, rows: slice) -> TrainBatch:
    g = torch.Generator().manual_seed(7)
    pixels = torch.randn(N_IMAGES, 3, 16, 16, generator=g)
    tokens = torch.randn(N_IMAGES, 5, 32, generator=g)  # the BLIP2 family takes frozen tokens for pixels
    index = STEPS[step][rows]
    images = (pixels if name == "clip" else tokens)[index]
    relevant = RELEVANT[step][rows]
    relevant = relevant[:, : int((relevant >= 0).sum(1).max())]  # each process its own width, as collated
    return TrainBatch(index, images, TEXTS[rows], relevant)


MODELS = ("clip", "blip2", "ours", "ours_noqscaler", "blip2_itm", "ours_itm")
COMPARED = MODELS[:5]


def run(name: str, ckpt: Path, rows: slice, world: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Two steps of ``name`` on ``rows`` of each batch; gradients averaged over the processes."""
    model = build(name, ckpt).train()
    model.setup("fit")
    out, missing = {}, set()
    for step in range(len(STEPS)):
        model.zero_grad(set_to_none=True)
        b = batch(name, step, rows)
        loss = model._loss(b) if name == "clip" else model._losses(b)["loss"]
        loss.backward()
        for pname, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if p.grad is None:
                missing.add(pname)
                continue
            grad = p.grad.detach().clone()
            if world > 1:
                dist.all_reduce(grad)
                grad /= world
            out[f"{name}/{step}/grad/{pname}"] = grad
        loss = loss.detach().reshape(1).clone()
        if world > 1:
            dist.all_reduce(loss)
            loss /= world
        out[f"{name}/{step}/loss"] = loss
    return out, sorted(missing)


def select_matches_rows(rank: int) -> bool:
    """``GlobalBatch.select`` (what the ITM negatives' frozen tokens are fetched with) against
    gathering everything and indexing: uneven row counts, repeated, unordered and one-sided
    picks (rank 1 asks nothing of rank 0), and a process that asks for nothing at all."""
    sizes = (3, 5)
    x = torch.arange(sizes[rank] * 4, dtype=torch.float32).view(sizes[rank], 2, 2) + 100 * rank
    b = GlobalBatch(rank, sizes)
    ok = True
    for index in ([7, 0, 3, 3, 2, 6], [5, 4]) if rank == 0 else ([4, 4, 7, 5], [6]):
        idx = torch.tensor(index)
        ok &= torch.equal(b.select(x, idx), b.rows(x, grad=False)[idx])
    empty = torch.zeros(0, dtype=torch.long) if rank == 1 else torch.tensor([1, 2])
    ok &= torch.equal(b.select(x, empty), b.rows(x, grad=False)[empty])
    return bool(ok)


def worker(rank: int, out_dir: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    half = len(TEXTS) // WORLD
    rows = slice(rank * half, (rank + 1) * half)
    tensors, missing = {}, {}
    for name in MODELS:
        values, missing[name] = run(name, Path(out_dir), rows, WORLD)
        tensors |= values
    everyone = [None] * WORLD
    dist.all_gather_object(everyone, missing)
    selected = [None] * WORLD
    dist.all_gather_object(selected, select_matches_rows(rank))
    if rank == 0:
        save_file(tensors, Path(out_dir) / "two.safetensors")
        (Path(out_dir) / "two.json").write_text(json.dumps({"missing": everyone, "select": selected}))
    dist.destroy_process_group()


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    clip = save_tiny_clip(out / "clip", TEXTS)
    save_tiny_blip2(out / "blip2", TEXTS, NQ, vision_checkpoint=str(clip))
    one = {}
    for name in COMPARED:
        one |= run(name, out, slice(None), 1)[0]
    save_file(one, out / "one.safetensors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(str(out), port), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main()
