"""The dense image-image path of ``bench feedback`` as it was before the top-k table
(commit b2a60c8), kept verbatim as the reference the new path must reproduce.

:class:`DenseGalleryScorer` allocates the gallery x gallery matrix and fills the rows of
shown items on first use; :func:`refreshed_dense` and the ``_*`` kernels are the old
``arms.refreshed`` and ``kernels`` over ``sims[c, d, G]``; :class:`DenseScoreRefresh` and
:class:`DenseLLMGuided` are the old arms that read the dense rows. Tests only: the point of
the new path is never to form this matrix. Since the user models (issue 30) the arms receive
:class:`~benchmark.feedback.marks.Marks`; the old arms read their ``ps`` only (the binary
user: NS = the rest), the one line added to each ``update``.
"""

from __future__ import annotations

import torch

from benchmark.feedback.arms import Arm, ArmState, Chunk, LLMGuided, _spread
from benchmark.feedback.config import RefreshConfig
from benchmark.feedback.similarity import GalleryScorer


class DenseGalleryScorer(GalleryScorer):
    """The old ``GalleryScorer.image_rows``: a dense ``[G, G]`` cache of image-image rows."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._image_rows = torch.zeros(0)
        self._have = torch.zeros(self.n_gallery, dtype=torch.bool)

    @torch.no_grad()
    def image_rows(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if self._image_rows.numel() == 0:
            self._image_rows = torch.zeros(self.n_gallery, self.n_gallery)
        missing = torch.unique(index[~self._have[index]])
        for s in range(0, len(missing), self.batch_size):
            rows = missing[s : s + self.batch_size]
            self._image_rows[rows] = (
                self.score_fn(self.gallery[rows.to(self.gallery.emb.device)], self.gallery).float().cpu()
            )
            self._have[rows] = True
        return self._image_rows[index]

    @property
    def n_dense_rows(self) -> int:
        return int(self._have.sum())


def _mean(sims, mask, neighbours, prev):
    m = mask.to(sims.dtype)
    return (sims * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)


def _max(sims, mask, neighbours, prev):
    masked = sims.masked_fill(~mask[..., None], float("-inf")).amax(1)
    return torch.where(mask.any(1, keepdim=True), masked, torch.zeros_like(masked))


def _knn(sims, mask, neighbours, prev):
    m = min(neighbours, sims.shape[-1])
    near = torch.zeros_like(sims)
    near.scatter_(-1, sims.topk(m, dim=-1).indices, 1.0)
    return _mean(near, mask, neighbours, prev)


def _standardised(x):
    finite = torch.isfinite(x)
    n = finite.sum(-1, keepdim=True).clamp(min=1)
    z = torch.where(finite, x, torch.zeros_like(x))
    mean = z.sum(-1, keepdim=True) / n
    z = torch.where(finite, z - mean, torch.zeros_like(x))
    std = (z.pow(2).sum(-1, keepdim=True) / n).sqrt()
    return z / torch.where(std > 0, std, torch.ones_like(std))


def _residual(sims, mask, neighbours, prev):
    zs, zq = _standardised(sims), _standardised(prev)[:, None, :]
    rho = (zs * zq).mean(-1, keepdim=True)
    return _mean(zs - rho * zq, mask, neighbours, prev)


#: kernel name -> (unit, fn) as the old registry had them
DENSE_KERNELS = {
    "mean": ("similarity", _mean),
    "max": ("similarity", _max),
    "knn": ("share", _knn),
    "residual": ("similarity", _residual),
}


def refreshed_dense(prev: torch.Tensor, sims: torch.Tensor, ps: torch.Tensor, w: RefreshConfig) -> torch.Tensor:
    unit, fn = DENSE_KERNELS[w.kernel]

    def term(mask):
        out = fn(sims, mask, w.neighbours, prev)
        if w.scale != "std":
            return out
        return out * _spread(prev) / (_spread(out) if unit == "similarity" else 1.0)

    return w.w0 * prev + w.w_ps * term(ps) - w.w_ns * term(~ps)


class DenseScoreRefresh(Arm):
    name = "refresh"

    def update(self, chunk: Chunk, state: ArmState, shown: torch.Tensor, marks, t: int) -> None:
        ps = marks.ps
        sims = chunk.scorer.image_rows(shown.reshape(-1)).view(*shown.shape, -1)
        state.scores = refreshed_dense(state.scores, sims, ps, chunk.config.refresh)


class DenseLLMGuided(LLMGuided):
    def update(self, chunk: Chunk, state: ArmState, shown: torch.Tensor, marks, t: int) -> None:
        ps = marks.ps
        if chunk.refiner is None:
            raise RuntimeError("the llm arm needs a Refiner")
        task, user, caps = chunk.task, chunk.user, chunk.task.gallery_captions
        ok, texts, failed = [], [], []
        for i, q in enumerate(chunk.queries):
            row, marks = shown[i].tolist(), ps[i].tolist()
            target = int(task.targets[q])
            r = chunk.refiner.refine(
                task.queries[q],
                state.current[i],
                [caps[g] for g, m in zip(row, marks, strict=True) if m],
                [caps[g] for g, m in zip(row, marks, strict=True) if not m],
                state.history[i],
                lambda k, question, q=q, target=target: user.answer(target, question, query=q, round_=t + 1, index=k),
            )
            chunk.counts["llm_rounds"] += 1
            state.history[i].extend(r.qa())
            state.log[i][-1].update(
                questions=r.qa(),
                refined_query=r.refined_query,
                fallback=r.failure,
                **({"detail": r.detail} if r.detail else {}),
            )
            if r.failure is None:
                ok.append(i)
                texts.append(r.refined_query)
                state.current[i] = r.refined_query
            else:
                chunk.counts[f"fallback/{r.failure}"] += 1
                failed.append(i)
        alpha = chunk.config.llm.alpha
        if ok:
            idx = torch.tensor(ok)
            state.scores[idx] = alpha * chunk.scorer.text_scores(texts) + (1 - alpha) * state.scores[idx]
        if failed:
            idx = torch.tensor(failed)
            sims = chunk.scorer.image_rows(shown[idx].reshape(-1)).view(len(failed), shown.shape[1], -1)
            state.scores[idx] = refreshed_dense(state.scores[idx], sims, ps[idx], chunk.config.refresh)


#: the arms that read image-image rows, in their dense form
DENSE_ARMS = {"refresh": DenseScoreRefresh(), "llm": DenseLLMGuided()}
