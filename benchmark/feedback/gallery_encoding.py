"""The evaluated split's gallery, encoded once for ``bench feedback`` and ``bench serve``.

:func:`gallery_batches` encodes it batch by batch in index order (through the model's item
loader when it has one, e.g. BLIP2's frozen-feature cache) and hands each batch to the host.
:func:`encode_gallery` keeps a gallery whose encodings stay below ``eval.memmap_min_mb`` whole
on the scoring device; a larger one goes into a scratch file under ``<cache>/eval-spill/``
that is mapped and unlinked (:func:`~benchmark.feedback.gallery_file.scratch_gallery`) and
stays on the host, as the evaluation keeps its gallery (the models move gallery blocks to their
device as they score). ``bench serve`` writes the same file as its
lasting encoding cache (:mod:`benchmark.serve.encoding_cache`).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import torch

from benchmark.feedback.gallery_file import row_bytes, scratch_gallery
from lightning_modules.base import Encoded
from lightning_modules.contract import ItemLoading

#: the scratch file's name in ``<cache>/eval-spill/`` (written under a temporary name, unlinked once mapped)
SCRATCH_NAME = "feedback-gallery.safetensors"


def gallery_batches(model, dm, device: str, cache_dir: str | Path) -> Iterator[tuple[torch.Tensor, Encoded]]:
    """``(gallery indices, encodings on the host)`` per batch of the evaluated split, in the
    loader's order (features cached under ``cache_dir`` by the model's item loader, if any)."""
    dm.set_transform(model.image_transform())
    dm.set_item_loader(model.item_loader(Path(cache_dir) / "features") if isinstance(model, ItemLoading) else None)
    with torch.no_grad():
        for index, items in dm.gallery_dataloader():
            yield index, model.encode_images(items.to(device)).to("cpu")


def encode_gallery(model, dm, device: str, cache_dir: str | Path, memmap_min_mb: float) -> Encoded:
    """The gallery of ``dm``'s evaluated split, encoded once in index order: on ``device`` when
    its encodings stay below ``memmap_min_mb``, else mapped from a scratch file (see the module)."""
    n_items = dm.eval_set().n_images
    budget = int(memmap_min_mb * 2**20)
    batches = gallery_batches(model, dm, device, cache_dir)
    first = next(batches, None)
    if first is None:
        raise RuntimeError("the gallery loader served no images")
    if row_bytes(first[1]) * n_items >= budget:  # mapped on the host, as the evaluation keeps a gallery
        scratch = Path(cache_dir) / "eval-spill" / SCRATCH_NAME
        return scratch_gallery(
            scratch, chain([first], batches), n_items, remedy="raise eval.memmap_min_mb to keep the gallery in memory"
        )
    parts = [first, *batches]
    order = torch.cat([index for index, _ in parts])
    if not torch.equal(order, torch.arange(n_items)):
        raise RuntimeError("the gallery loader did not serve the images in index order")
    return Encoded.cat([enc for _, enc in parts]).to(device)
