"""Dynamic query length for BLIP2-IDQ-Former: r -> L, the soft mask, scoring and the length losses.

Algorithm 1 (InstructSee, Sensors 2025), step 2, maps the QScaler's complexity score r in
[0, 1] to a query length between a base and a maximum length. The pieces, configured by
:class:`LengthConfig`:

* **Length**: ``L_soft = L_base + r (L_max - L_base)`` (continuous, training) and
  ``L = L_base + round(r (L_max - L_base))`` (integer, evaluation and the reported query
  length); the QScaler starts at ``L_init``.
* **Scoring** (ITC): ``s(text, image) = max_{i < L_text} <t, z_i>`` over the first L query
  outputs of the image (:func:`length_limited_max_sim`, the ``score`` of ``--model ours``).
* **Soft mask** (training): query ``i`` gets the weight ``m_i = sigmoid((L_soft - i - 0.5) /
  tau)`` (``m_i > 0.5`` exactly for the queries the rounded L keeps) and the contrastive
  logit is ``max_i (s_i / T + log m_i)`` with ``T`` the ITC temperature
  (:func:`soft_masked_logits`), so L receives the InfoNCE gradient: a positive whose best
  query lies beyond L pushes L up, a negative won by a late query pushes it down.
* **Cost**: ``length_weight * mean(L_soft) / L_max``.
* **Self-supervised target** (``oracle_weight``): per text, the smallest L at which its
  positive ranks as well as with ``L_max`` queries (:func:`oracle_lengths`, no gradient,
  ties counted against the model), among the batch and a queue of recent batches' images
  (``oracle_negatives``); ``r* = (L* - L_base) / (L_max - L_base)`` clipped to [0, 1] and a
  binary cross-entropy between r and r*.
* **All-query ITC** (``lmax_itc_weight``): beside the soft-masked ITC, the same InfoNCE over
  all ``L_max`` queries (``max_i s_i``, no mask), so the queries beyond the texts' current L
  keep receiving gradient.
* **Noise** (Algorithm 1): ``r + N(0, noise_std)`` in training only, clipped to [0, 1] with a
  straight-through gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_modules.base import Encoded, max_sim


@dataclass(frozen=True)
class LengthConfig:
    """How r maps to L and how L is trained (see the module docstring for each term)."""

    l_base: int = 2
    l_max: int = 48
    l_init: int = 32  # QScaler's initial length (BLIP-2's 32 queries)
    noise_std: float = 0.05
    mask_tau: float = 1.0
    length_weight: float = 0.1
    oracle_weight: float = 0.5
    lmax_itc_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.l_base <= self.l_max:
            raise ValueError(f"need 1 <= l_base <= l_max, got l_base={self.l_base}, l_max={self.l_max}")
        if not self.l_base <= self.l_init <= self.l_max:
            raise ValueError(f"l_init={self.l_init} must lie in [l_base, l_max]")
        if (
            self.noise_std < 0
            or self.mask_tau <= 0
            or self.length_weight < 0
            or self.oracle_weight < 0
            or self.lmax_itc_weight < 0
        ):
            raise ValueError("noise_std, length_weight, oracle_weight, lmax_itc_weight must be >= 0 and mask_tau > 0")

    @property
    def span(self) -> int:
        return self.l_max - self.l_base

    @property
    def r_init(self) -> float:
        return (self.l_init - self.l_base) / self.span if self.span else 0.5

    def soft_length(self, r: torch.Tensor) -> torch.Tensor:
        """Continuous ``L_base + r (L_max - L_base)``."""
        return self.l_base + r * self.span

    def hard_length(self, r: torch.Tensor) -> torch.Tensor:
        """Integer ``L_base + round(r (L_max - L_base))`` (long), always in [L_base, L_max]."""
        return (self.l_base + torch.round(r.detach().clamp(0, 1) * self.span)).long()

    def ratio(self, length: torch.Tensor) -> torch.Tensor:
        """The r that gives ``length``, clipped to [0, 1]."""
        if not self.span:
            return torch.full_like(length, 0.5, dtype=torch.float32)
        return ((length.float() - self.l_base) / self.span).clamp(0, 1)


def add_length_noise(r: torch.Tensor, std: float, training: bool) -> torch.Tensor:
    """Gaussian noise on r in training only; clipped to [0, 1] with a straight-through gradient."""
    if not training or std <= 0:
        return r
    noisy = r + std * torch.randn_like(r)
    return noisy + (noisy.clamp(0, 1) - noisy).detach()


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``scale`` in the backward pass."""
    if scale == 1.0:
        return x
    return x.detach() + scale * (x - x.detach())


def soft_log_mask(soft_length: torch.Tensor, l_max: int, tau: float) -> torch.Tensor:
    """``log m_i = log sigmoid((L_soft - i - 0.5) / tau)``, ``[B] -> [B, l_max]``."""
    i = torch.arange(l_max, device=soft_length.device, dtype=soft_length.dtype)
    return F.logsigmoid((soft_length[:, None] - i[None] - 0.5) / tau)


def per_query_sims(texts: torch.Tensor, image_queries: torch.Tensor) -> torch.Tensor:
    """``[Q, D]`` x ``[G, L, D]`` -> ``[Q, G, L]`` dot products (cosines for unit vectors)."""
    return torch.einsum("qd,gld->qgl", texts, image_queries)


def soft_masked_logits(sims: torch.Tensor, log_mask: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """Training logits ``max_i (sims[q, g, i] / T + log_mask[q, i])``, ``[Q, G, L] -> [Q, G]``.

    ``log_mask`` belongs to the *texts* (their L), ``[Q, L]``; use the same ``[Q, G]``
    matrix for both InfoNCE directions.
    """
    return (sims / temperature + log_mask[:, None, :]).amax(-1)


def length_limited_max_sim(queries: Encoded, gallery: Encoded, chunk: int = 4096) -> torch.Tensor:
    """Evaluation score of ``--model ours``: texts use only the first L outputs of each image.

    * text -> image: ``queries.emb`` ``[Q, D]`` with ``queries.lengths`` = L per text,
      ``gallery.emb`` ``[G, L_max, D]``; ``score[q, g] = max_{i < L_q} <t_q, z_{g,i}>``.
    * image -> text: ``queries.emb`` ``[Q, L_max, D]``, ``gallery.emb`` ``[G, D]`` with
      ``gallery.lengths`` = L per text: the same pairs' scores, transposed.
    * anything else (image -> image, no lengths): :func:`lightning_modules.base.max_sim`.

    Note the different meaning of ``lengths`` from ``max_sim``'s: here a single-vector
    text's L limits the *other side's* vectors. Gallery chunks of ``chunk`` items bound the
    ``[Q, chunk, L_max]`` intermediate.
    """
    if queries.emb.ndim == 2 and queries.lengths is not None and gallery.emb.ndim == 3:
        return _text_vs_images(queries.emb, queries.lengths, gallery.emb, chunk)
    if gallery.emb.ndim == 2 and gallery.lengths is not None and queries.emb.ndim == 3:
        return _text_vs_images(gallery.emb, gallery.lengths, queries.emb, chunk).T
    return max_sim(queries, gallery)


def _text_vs_images(texts: torch.Tensor, lengths: torch.Tensor, images: torch.Tensor, chunk: int) -> torch.Tensor:
    """Texts grouped by their L: each group is one matrix product with the first L outputs of
    the images, so no product beyond a text's L is computed or masked (rather than scoring all
    ``L_max`` outputs and masking).
    Each gallery chunk is laid out query-major once (``[L_max, chunk, D]``), so every group's
    prefix is a contiguous view, not a copy (with many distinct L, e.g. 8-32, the per-group
    copies cost more than the products)."""
    lengths = lengths.to(texts.device)
    out = texts.new_empty(texts.shape[0], images.shape[0])
    groups = [(n, (lengths == n).nonzero(as_tuple=True)[0]) for n in torch.unique(lengths).tolist()]
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].to(texts.device)
        by_query = block.transpose(0, 1).contiguous()  # [L_max, chunk, D]
        for n, rows in groups:
            n = min(n, by_query.shape[0])  # a length beyond the images' outputs keeps them all
            flat = by_query[:n].reshape(-1, by_query.shape[-1])  # [n chunk, D], a view
            out[rows, start : start + len(block)] = (texts[rows] @ flat.T).view(len(rows), n, len(block)).amax(1)
    return out


@torch.no_grad()
def oracle_lengths(sims: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per text, the smallest L whose in-batch rank of the positive equals the rank at L_max.

    ``sims`` ``[Q, B, L_max]`` per-query similarities of each text with each batch image,
    ``positive`` ``[Q, B]`` boolean (several positives allowed; the best one counts). Rank
    at L = 1 + number of negatives scoring >= the best positive with the first L outputs
    (ties against the model). Returns ``[Q]`` long in ``1..L_max``; a text without a positive
    gets ``L_max``.
    """
    return _oracle_from_steps(length_major(sims), positive)


def length_major(*parts: torch.Tensor) -> torch.Tensor:
    """``[Q, B_k, L]`` blocks -> one contiguous ``[L, Q, sum B_k]`` tensor (the blocks side by
    side along the image axis), built with one strided copy per block: the layout the oracle's
    running maximum reads (each of its L steps then reads one contiguous ``[Q, B]`` slice
    instead of every cache line of the whole tensor)."""
    n_len, n_text = parts[0].shape[-1], parts[0].shape[0]
    out = parts[0].new_empty(n_len, n_text, sum(p.shape[1] for p in parts))
    start = 0
    for part in parts:
        out[:, :, start : start + part.shape[1]].copy_(part.permute(2, 0, 1))
        start += part.shape[1]
    return out


def _oracle_from_steps(steps: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """:func:`oracle_lengths` on ``steps`` = the similarities laid out ``[L_max, Q, B]``
    (contiguous; overwritten with their prefix maxima)."""
    n_len, n_text = steps.shape[0], steps.shape[1]
    # [L, Q, B] prefix maxima by a running max over contiguous [Q, B] slices, in place; with the
    # sparse positives below, ~5x faster than cummax + masked maxima at the training pool's size
    prefix = steps
    for i in range(1, n_len):
        torch.maximum(prefix[i - 1], prefix[i], out=prefix[i])
    q, b = positive.nonzero(as_tuple=True)  # sparse: the best positive by scatter, not a masked max
    pos_best = torch.full((n_len, n_text), torch.finfo(steps.dtype).min, dtype=steps.dtype, device=steps.device)
    pos_best.scatter_reduce_(1, q[None].expand(n_len, -1), prefix[:, q, b], reduce="amax")
    # rank = 1 + negatives >= the best positive = 1 + (all items >= it) - (non-negatives >= it)
    at_or_above = (prefix >= pos_best[:, :, None]).sum(2, dtype=torch.int32)  # [L, Q]
    oq, ob = positive.nonzero(as_tuple=True)
    not_negative = torch.zeros_like(at_or_above)
    not_negative.index_add_(1, oq, (prefix[:, oq, ob] >= pos_best[:, oq]).to(torch.int32))
    rank = 1 + at_or_above - not_negative
    good = rank <= rank[-1:]
    first = good.to(torch.uint8).argmax(0) + 1  # the last length is always good
    first[~positive.any(1)] = n_len
    return first


def length_losses(
    r: torch.Tensor, soft_length: torch.Tensor, config: LengthConfig, oracle: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The QScaler's extra loss terms: ``length`` cost and (with ``oracle``) the ``oracle`` BCE.

    ``r`` is the QScaler output before noise (``[B]`` in [0, 1]), ``soft_length`` the
    continuous L actually used, ``oracle`` the target lengths of :func:`oracle_lengths`.
    Each value is already weighted; sum them into the task loss.
    """
    out = {"length": config.length_weight * soft_length.mean() / config.l_max}
    if oracle is not None and config.oracle_weight > 0:
        target = config.ratio(oracle).to(r.dtype)
        out["oracle"] = config.oracle_weight * F.binary_cross_entropy(r.clamp(1e-6, 1 - 1e-6), target)
    return out


@dataclass(frozen=True)
class GlobalColumns:
    """Under DDP, the global batch that one process's rows are scored against (every process's
    items in rank order, this one's included; :mod:`~lightning_modules.components.cross_rank`).

    ``texts`` ``[N_t, D]``, ``image_queries`` ``[N_i, L_max, D]`` and ``soft_length`` ``[N_t]``
    are gathered with gradient; ``positives_i2t`` ``[n_i, N_t]`` (bool): the local images x
    every text."""

    texts: torch.Tensor
    image_queries: torch.Tensor
    soft_length: torch.Tensor
    positives_i2t: torch.Tensor


def dynamic_itc(
    texts: torch.Tensor,
    image_queries: torch.Tensor,
    soft_length: torch.Tensor,
    r: torch.Tensor,
    positives: torch.Tensor,
    temperature: torch.Tensor | float,
    config: LengthConfig,
    label_smoothing: float = 0.0,
    oracle_negatives: torch.Tensor | None = None,
    columns: GlobalColumns | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The in-batch training losses of IDQ-Former's ITC with a learnable L.

    ``texts`` ``[B_t, D]`` and ``image_queries`` ``[B_i, L_max, D]`` (normalised, nested
    query outputs), ``soft_length`` ``[B_t]`` the texts' continuous L (noisy in training),
    ``r`` the QScaler output before noise, ``positives`` ``[B_t, B_i]`` boolean (items of the
    same image are positives of each other). Returns ``(losses, sim_t2i, sim_i2t)``: the weighted terms
    ``itc`` (symmetric multi-positive InfoNCE over :func:`soft_masked_logits`), ``itc_lmax``
    (the same over all ``L_max`` queries, with ``lmax_itc_weight > 0``), ``length``
    and, with ``oracle_weight > 0``, ``oracle`` (their sum is the loss); and ``sim_t2i`` ``[B_t,
    B_i]`` = ``T x logits`` = ``max_i (s_i + T log m_i)``, e.g. for ITM hard-negative mining,
    with ``sim_i2t`` its images' view (here ``sim_t2i.T``);
    with the oracle also ``oracle_length``, the mean target L (a diagnostic, not a loss).
    ``oracle_negatives`` ``[N, L_max, D]``: extra images, none of them a positive of any text
    here (e.g. a queue of recent batches), that join the batch only when the oracle lengths
    are ranked (no gradient): an in-batch rank among ~100 images is too easy a criterion
    (the first few queries already rank most positives first), a pool of ~1000 is about the
    difficulty of the test gallery.

    ``columns`` (DDP, :class:`GlobalColumns`): the local texts are scored against every
    process's images and the local images against every process's texts (each with that
    text's own soft mask), ``positives`` then covers the local texts x the global images, ``sim_t2i`` is ``[n_t, N_i]`` and ``sim_i2t`` ``[n_i, N_t]``;
    every term is the mean over the local rows (the caller weights it, ``loss_scale``). The
    oracle ranks the global batch (and the queue); ``length`` and ``oracle`` average the local
    texts.
    """
    images_all = image_queries if columns is None else columns.image_queries
    sims = per_query_sims(texts, images_all)  # [B_t, B_i, L_max]: local texts x every image
    log_mask = soft_log_mask(soft_length, image_queries.shape[1], config.mask_tau)
    logits = soft_masked_logits(sims, log_mask, temperature)
    if columns is None:  # one process: the images' view is the same matrix
        sims_c, log_mask_c, logits_c = sims, log_mask, logits
    else:  # [N_t, n_i, L_max]: every text (its own mask) x the local images
        sims_c = per_query_sims(columns.texts, image_queries)
        log_mask_c = soft_log_mask(columns.soft_length, image_queries.shape[1], config.mask_tau)
        logits_c = soft_masked_logits(sims_c, log_mask_c, temperature)
    target = positives.float()
    target_c = target.T if columns is None else columns.positives_i2t.float()

    def infonce(lg: torch.Tensor, lg_i2t: torch.Tensor | None = None) -> torch.Tensor:
        lg_i2t = lg if lg_i2t is None else lg_i2t
        return 0.5 * (
            F.cross_entropy(lg, target / target.sum(1, keepdim=True), label_smoothing=label_smoothing)
            + F.cross_entropy(lg_i2t.T, target_c / target_c.sum(1, keepdim=True), label_smoothing=label_smoothing)
        )

    itc = infonce(logits, None if columns is None else logits_c)
    extra_terms = {}
    if config.lmax_itc_weight > 0:
        lmax_logits = sims.amax(-1) / temperature
        lmax_logits_c = None if columns is None else sims_c.amax(-1) / temperature
        extra_terms["itc_lmax"] = config.lmax_itc_weight * infonce(lmax_logits, lmax_logits_c)
    oracle = None
    if config.oracle_weight > 0:
        pool, pool_pos = [sims.detach()], positives
        if oracle_negatives is not None and len(oracle_negatives):
            pool.append(per_query_sims(texts.detach(), oracle_negatives.to(texts.dtype)))
            pool_pos = torch.cat([positives, positives.new_zeros(positives.shape[0], pool[1].shape[1])], dim=1)
        oracle = _oracle_from_steps(length_major(*pool), pool_pos)
    out = {"itc": itc, **extra_terms, **length_losses(r, soft_length, config, oracle)}
    if oracle is not None:
        out["oracle_length"] = oracle.float().mean()  # logged only, not a loss term
    sim_t2i = logits * temperature
    return out, sim_t2i, sim_t2i.T if columns is None else logits_c.T * temperature
