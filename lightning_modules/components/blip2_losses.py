"""BLIP-2 retrieval training losses as plain functions: ITC and ITM with hard negatives.

Following BLIP-2's first-stage objectives (Li et al., 2023; LAVIS ``blip2_qformer.py``),
reduced to one process and made multi-positive:

* **ITC** (:func:`itc_similarities`, :func:`itc_loss`): image-text similarity = the max
  over the (valid) query outputs of ``<q_i, t>``; logits = similarity / learnable
  temperature; symmetric cross entropy in the batch, where items of the same image are
  positives of each other (their targets share the probability mass, as in
  ``lightning_modules/clip.py``); LAVIS's label smoothing (0.1) is an option.
* **ITM hard negatives** (:func:`sample_hard_negatives`, :func:`itm_pairs`): for each image a
  negative text drawn from the softmax of its ITC logits (the similarities divided by the
  temperature, as LAVIS does: the caller divides) over the texts that are *not* positives of
  it; the same for each text. Rows without any non-positive candidate
  get no negative. To bound the cost on a CPU, the ITM anchors can be limited to the first
  ``max_anchors`` items of the (shuffled) batch; their negatives still come from all of it.
  The ITM batch is the anchors' positive pairs plus these negatives, classified by the
  model's ITM head (:func:`itm_loss`).
* **Across DDP processes** (:mod:`~lightning_modules.components.cross_rank`): each process
  scores its own rows against the gathered global batch, so the similarities come in two
  blocks, ``sim_i2t`` (local images x every text) and ``sim_t2i`` (local texts x every
  image): :func:`itc_loss_blocks` and :func:`itm_pairs_blocks` (LAVIS: hard negatives drawn
  from the gathered similarities). In one process the blocks are ``sim`` and ``sim.T``, and
  :func:`itc_loss` / :func:`itm_pairs` keep the exact operations of before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_modules.components.cross_rank import GlobalBatch


def itc_similarities(
    image_feats: torch.Tensor, text_feat: torch.Tensor, query_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B_img, B_txt]`` max-over-queries similarity of normalised ``[B, L, E]`` and ``[B, E]``."""
    sim = torch.einsum("ble,te->btl", image_feats, text_feat)
    if query_mask is not None:
        sim = sim.masked_fill(~query_mask.bool()[:, None, :], torch.finfo(sim.dtype).min)
    return sim.amax(-1)


def itc_loss(
    sim_i2t: torch.Tensor, temp: torch.Tensor, positives: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Symmetric InfoNCE over ``sim_i2t / temp`` with multi-positive targets.

    ``positives [B, B]`` (bool, images x texts): pairs that count as matches (same image).
    """
    logits = sim_i2t / temp
    target = positives.float()
    target_i2t = target / target.sum(1, keepdim=True)
    target_t2i = target.T / target.T.sum(1, keepdim=True)
    return 0.5 * (
        F.cross_entropy(logits, target_i2t, label_smoothing=label_smoothing)
        + F.cross_entropy(logits.T, target_t2i, label_smoothing=label_smoothing)
    )


def itc_loss_blocks(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    temp: torch.Tensor,
    positives_i2t: torch.Tensor,
    positives_t2i: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """:func:`itc_loss` of one process's rows against the global batch: ``sim_i2t [n_img, N_txt]``
    (its images x every text), ``sim_t2i [n_txt, N_img]`` (its texts x every image) and their
    positives (bool, same shapes). The mean over the local rows of each direction."""

    def direction(sim: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        target = positives.float()
        return F.cross_entropy(sim / temp, target / target.sum(1, keepdim=True), label_smoothing=label_smoothing)

    return 0.5 * (direction(sim_i2t, positives_i2t) + direction(sim_t2i, positives_t2i))


@dataclass(frozen=True)
class ItcBlocks:
    """One process's ITC similarities against the global batch and their positives: ``sim_i2t``
    ``[n, N]`` (local images x every text), ``sim_t2i`` ``[n, N]`` (local texts x every image);
    ``offset`` = the global position of the first local item. One process: ``sim``, ``sim.T``."""

    sim_i2t: torch.Tensor
    sim_t2i: torch.Tensor
    positives_i2t: torch.Tensor
    positives_t2i: torch.Tensor
    offset: int = 0

    def local(self, columns: slice) -> ItcBlocks:
        """The blocks restricted to the local items' columns (``GlobalBatch.local``): negatives
        drawn from this process only, indices local."""
        return ItcBlocks(
            self.sim_i2t[:, columns],
            self.sim_t2i[:, columns],
            self.positives_i2t[:, columns],
            self.positives_t2i[:, columns],
        )


def batch_itc(
    image_feats: torch.Tensor,
    text_feat: torch.Tensor,
    index: torch.Tensor,
    temp: torch.Tensor,
    label_smoothing: float = 0.0,
    batch: GlobalBatch | None = None,
) -> tuple[torch.Tensor, ItcBlocks]:
    """BLIP-2's ITC of a training batch (items of the same image ``index`` are positives) and its
    similarity blocks (for the ITM hard negatives). ``batch``: the global batch of a DDP step
    (:mod:`~lightning_modules.components.cross_rank`): the local rows are scored against every
    process's items, gathered with gradient, and the loss carries ``batch.loss_scale``; None:
    :func:`itc_loss` on the batch alone, as in one process."""
    if batch is None:
        sim = itc_similarities(image_feats, text_feat)
        positives = index[:, None] == index[None, :]
        return itc_loss(sim, temp, positives, label_smoothing), ItcBlocks(sim, sim.T, positives, positives.T)
    every = batch.rows(index, grad=False)
    sim_i2t = itc_similarities(image_feats, batch.rows(text_feat))
    sim_t2i = itc_similarities(batch.rows(image_feats), text_feat).T
    positives = index[:, None] == every[None, :]  # the same for both directions: item a = image a + text a
    loss = itc_loss_blocks(sim_i2t, sim_t2i, temp, positives, positives, label_smoothing)
    return batch.loss_scale * loss, ItcBlocks(sim_i2t, sim_t2i, positives, positives, batch.start)


def sample_hard_negatives(
    sim: torch.Tensor, positives: torch.Tensor, generator: torch.Generator | None = None, hard_fraction: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``sim [R, C]`` (logits: ITC similarity / temperature), one column drawn from
    ``softmax(sim)`` over the non-positive
    columns (``positives [R, C]`` bool) -- with probability ``hard_fraction``; otherwise
    uniformly over them (the mixture ``h softmax + (1 - h) uniform``). Returns ``(column
    [R], valid [R])``; ``valid`` is False for rows whose every column is a positive (their
    column is meaningless)."""
    if not 0 <= hard_fraction <= 1:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    sim = sim.detach().float()
    valid = (~positives).any(1)
    logits = sim.masked_fill(positives, float("-inf"))
    logits = torch.where(valid[:, None], logits, torch.zeros_like(logits))  # any distribution for invalid rows
    probs = torch.softmax(logits, dim=1)
    if hard_fraction < 1:
        uniform = (~positives).float()
        uniform = torch.where(valid[:, None], uniform, torch.ones_like(uniform))
        probs = hard_fraction * probs + (1 - hard_fraction) * uniform / uniform.sum(1, keepdim=True)
    cols = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return cols, valid


def itm_pairs(
    sim_i2t: torch.Tensor,
    positives: torch.Tensor,
    generator: torch.Generator | None = None,
    max_anchors: int | None = None,
    hard_fraction: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ITM batch: ``(image_index, text_index, label)``, each ``[P]``.

    For the anchors (the first ``max_anchors`` items of the batch; all by default): every
    positive (image i, text i) pair (label 1), then each anchor image with a hard negative
    text and each anchor text with a hard negative image, drawn from the whole batch (label 0;
    ``hard_fraction``: see :func:`sample_hard_negatives`).
    """
    return itm_pairs_blocks(
        sim_i2t,
        sim_i2t.T,
        positives,
        positives.T,
        generator=generator,
        max_anchors=max_anchors,
        hard_fraction=hard_fraction,
    )


def itm_pairs_blocks(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    positives_i2t: torch.Tensor,
    positives_t2i: torch.Tensor,
    offset: int = 0,
    generator: torch.Generator | None = None,
    max_anchors: int | None = None,
    hard_fraction: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`itm_pairs` of one process's items (item ``a`` = image ``a`` and text ``a``) against
    the global batch: ``sim_i2t [n, N]`` / ``sim_t2i [n, N]`` and their positives as in
    :func:`itc_loss_blocks`; ``offset``: the global position of the first local item. The
    anchors are the first ``max_anchors`` local items; their negatives come from all ``N``.
    Indices are global (into the gathered images and texts); in one process ``(sim, sim.T)``
    with offset 0 is :func:`itm_pairs`."""
    b = sim_i2t.shape[0]
    n = b if max_anchors is None else min(b, max_anchors)
    ar = torch.arange(n, device=sim_i2t.device)
    neg_txt, ok_i = sample_hard_negatives(sim_i2t[:n], positives_i2t[:n], generator, hard_fraction)
    neg_img, ok_t = sample_hard_negatives(sim_t2i[:n], positives_t2i[:n], generator, hard_fraction)
    own = ar + offset if offset else ar
    img = torch.cat([own, own[ok_i], neg_img[ok_t]])
    txt = torch.cat([own, neg_txt[ok_i], own[ok_t]])
    labels = torch.cat(
        [
            torch.ones(n, dtype=torch.long, device=ar.device),
            torch.zeros(int(ok_i.sum()) + int(ok_t.sum()), dtype=torch.long, device=ar.device),
        ]
    )
    return img, txt, labels


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy of ITM logits ``[P, 2]`` against match labels ``[P]``."""
    return F.cross_entropy(logits, labels)
