"""CrossGET token merging as a vision tower (Shi et al., ICML 2024, arXiv:2305.17455).

Every layer merges a constant ``r`` tokens, between the attention residual and the MLP:

* **cross token**: an extra token appended after the patches, initialized from the CLS
  embedding; its input to layer ``l`` is ``stop_grad(its output of layer l-1) + delta_l``
  with a learnable per-layer ``delta`` (zero init). It never merges and is dropped from
  the output.
* **cross-guided importance** of token ``i``: cosine of its key (mean over heads) with the
  cross token's query (mean over heads), without gradient.
* **complete-graph soft matching**: cosine similarity of the keys over all token pairs
  (self, CLS and cross token excluded); tokens are ranked by their best match and a token
  may only count a partner ranked after it; ``score_i = importance_i - best allowed
  similarity``; the ``r`` lowest scores are sources, each merged into its most similar
  remaining token.
* **cross-guided weighted ensemble**: merge weights ``2 * softmax([imp_src, imp_dst])``
  applied to the size-weighted tokens; sizes add (they always sum to ``1 + P``), and
  ``log(size)`` is added to the attention logits (proportional attention, as in ToMe).

Adapter choice for a *frozen* BLIP2 / CLIP tower (the official code fine-tunes a whole
CLIP, and its cross token is also a key for every other token): by default the cross
token attends to all tokens but no other token attends to it (``cross_token_visible=
False``), so the pretrained features are not perturbed by a token they never saw and
``r = 0`` reproduces the unmodified encoder exactly. ``cross_token_visible=True`` gives the
official behaviour.

Training adds the cross-token alignment loss (:func:`cross_alignment_loss`, weight 0.5
beside 0.5 * ITC) between the projected image cross tokens of every layer
(:func:`project_cross_tokens`) and the text-side cross token. Untrained (``delta = 0``) the
method degenerates to a self-guided merge: :attr:`CrossGETTower.guidance` says which ran.

Default ``r = 6`` is for the tiny 4-layer, 36-patch tower: 37 -> 31 -> 25 -> 19 tokens enter
the layers and 13 leave (merging also in the last layer, as the official code does):
0.716x the unpruned encoder's fvcore FLOPs, cross token and matching included (r = 5:
0.769x, misses the 0.75x target; r = 7: 0.664x). ``r`` is a per-encoder choice: on BLIP-2's
39-layer ViT-g/14 (256 patches) r = 5 gives 0.617x (62 tokens out), close to DynamicViT-0.7's
0.626x there; the paper's ViT-B/16 uses r = 16 (~58%). See scripts/bench_token_reduction.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.components.vit_runner import TokenHooks, ViTRunner

DEFAULT_R = 6


@dataclass
class Matching:
    """One layer's merge plan. src [B, r] and dst_all [B, t - r] (ascending) index tokens;
    dst [B, r] indexes into dst_all; weight [B, r, 2] are the ensemble weights (sum 2)."""

    src: torch.Tensor
    dst_all: torch.Tensor
    dst: torch.Tensor
    weight: torch.Tensor


@functools.lru_cache(maxsize=64)
def _excluded_pairs(t: int, device: str) -> torch.Tensor:
    """[t, t] True where a pair never matches: self pairs, and any pair with CLS (0) or the
    cross token (t - 1)."""
    mask = torch.eye(t, dtype=torch.bool, device=device)
    mask[[0, -1], :] = True
    mask[:, [0, -1]] = True
    return mask


@torch.no_grad()
def complete_graph_match(metric: torch.Tensor, query: torch.Tensor, r: int) -> Matching:
    """CrossGET's complete-graph soft matching with cross-guided importance.

    ``metric`` [B, t, c] keys (token 0 = CLS and token t-1 = cross token are protected),
    ``query`` [B, c] the cross token's query. ``r`` must be <= (t - 2) // 2.
    """
    b, t, _ = metric.shape
    m = F.normalize(metric.float(), dim=-1)
    neg = float("-inf")
    sim = (m @ m.transpose(-1, -2)).masked_fill(_excluded_pairs(t, str(metric.device)), neg)
    importance = (m @ F.normalize(query.float(), dim=-1).unsqueeze(-1)).squeeze(-1)  # [B, t]
    # Rank tokens by their best match (ties by position); a token may only count partners
    # ranked after it. Pairwise comparisons instead of sorts: fewer, cheaper kernels.
    best = sim.amax(dim=-1)
    pos = torch.arange(t, device=metric.device)
    best_a, best_b = best.unsqueeze(2), best.unsqueeze(1)  # [B, a, 1], [B, 1, b]
    after = (best_b < best_a) | ((best_b == best_a) & (pos.view(1, 1, t) > pos.view(1, t, 1)))
    best_allowed = torch.where(after, sim, neg).amax(dim=-1)
    score = importance - best_allowed  # protected and last-ranked tokens: +inf, never sources
    src = score.topk(r, dim=1, largest=False).indices
    # the other tokens, ascending: each kept token's slot is its running count; sources go to
    # a spare last slot that is dropped (integer scatter_add: deterministic)
    keep = torch.ones_like(score, dtype=torch.bool).scatter(1, src, torch.zeros_like(src, dtype=torch.bool))
    slot = torch.where(keep, keep.cumsum(dim=1) - 1, t - r)
    dst_all = torch.zeros(b, t - r + 1, dtype=torch.long, device=metric.device).scatter_add_(
        1, slot, torch.where(keep, pos, 0).expand(b, t))[:, :-1]
    sim_sd = sim.gather(1, src.unsqueeze(-1).expand(-1, -1, t)).gather(2, dst_all.unsqueeze(1).expand(-1, r, -1))
    dst = sim_sd.argmax(dim=-1)
    imp_src = importance.gather(1, src)
    imp_dst = importance.gather(1, dst_all).gather(1, dst)
    weight = 2.0 * torch.stack([imp_src, imp_dst], dim=-1).softmax(dim=-1)
    return Matching(src, dst_all, dst, weight)


def merge_tokens(x: torch.Tensor, size: torch.Tensor, match: Matching) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-guided weighted ensemble: ``x`` [B, t, D], ``size`` [B, t, 1] (fp32) -> merged
    [B, t - r, D] and sizes [B, t - r, 1] (token order kept; sizes sum unchanged)."""
    b, t, d = x.shape
    r = match.src.shape[1]
    # Flattened [B * t] rows (index_select / index_add are the fast paths). Only the r
    # destinations per image change, so instead of rescaling every token by its size the
    # update is written as a per-source delta: with S_d the destination's new size,
    # x_d' = (s_d x_d + sum_k [w0 s_k x_k + (w1 - 1) s_d x_d]) / S_d
    #      = x_d + sum_k (w0 s_k x_k + (w1 - 1) s_d x_d - s_k x_d) / S_d.
    base = torch.arange(b, device=x.device).unsqueeze(1)
    src = (match.src + base * t).flatten()
    keep = (match.dst_all + base * t).flatten()
    dst = (match.dst + base * (t - r)).flatten()  # rows of the kept tokens
    flat_size = size.reshape(b * t)
    s_src = flat_size.index_select(0, src)
    new_size = flat_size.index_select(0, keep).index_add(0, dst, s_src)
    s_dst = flat_size.index_select(0, keep).index_select(0, dst)  # sizes before the merge
    kept = x.reshape(b * t, d).index_select(0, keep)
    x_src = x.reshape(b * t, d).index_select(0, src)
    x_dst = kept.index_select(0, dst)
    w = match.weight.reshape(b * r, 2)
    coef_src = (w[:, 0] * s_src / new_size.index_select(0, dst)).to(x.dtype).unsqueeze(1)
    coef_dst = (((w[:, 1] - 1.0) * s_dst - s_src) / new_size.index_select(0, dst)).to(x.dtype).unsqueeze(1)
    kept.index_add_(0, dst, coef_src * x_src + coef_dst * x_dst)
    return kept.view(b, t - r, d), new_size.view(b, t - r, 1)


@dataclass
class CrossGETOutput:
    """tokens [B, N', D] (post-layernorm, cross token dropped); sizes [B, N'] (sum 1 + P);
    cross_tokens [L, B, D]: the cross token's input to every layer (for the alignment loss)."""

    tokens: torch.Tensor
    sizes: torch.Tensor
    cross_tokens: torch.Tensor


class _Hooks(TokenHooks):
    def __init__(self, tower: CrossGETTower) -> None:
        self.tower = tower
        self.size: torch.Tensor | None = None
        self.cross: list[torch.Tensor] = []
        self.tokens_per_layer: list[int] = []

    def begin(self, x: torch.Tensor) -> torch.Tensor:
        self.size = torch.ones(x.shape[0], x.shape[1] + 1, 1, device=x.device)  # fp32: exact counts
        return torch.cat([x, x[:, :1]], dim=1)  # cross token seeded from CLS

    def before_layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        cross = x[:, -1].detach() + self.tower.cross_delta[i].to(x.dtype)
        self.cross.append(cross)
        self.tokens_per_layer.append(x.shape[1] - 1)
        x[:, -1] = cross  # in place: x is a fresh tensor (embedding concat or residual sum)
        return x

    def attention_bias(self, i: int, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        bias = self.size.squeeze(-1).log().to(x.dtype)[:, None, None, :]  # proportional attention
        if not self.tower.cross_token_visible:  # nobody but itself attends to the cross token
            hide = torch.zeros(n, n, dtype=x.dtype, device=x.device)
            hide[:-1, -1] = float("-inf")
            bias = bias + hide
        return bias

    def after_attention(self, i: int, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        r = min(self.tower.r, (x.shape[1] - 2) // 2)
        if r <= 0:
            return x
        match = complete_graph_match(k.mean(dim=1), q[:, :, -1].mean(dim=1), r)  # keys, cross query
        x, self.size = merge_tokens(x, self.size, match)
        return x

    def end(self, x: torch.Tensor) -> torch.Tensor:
        self.size = self.size[:, :-1]
        return x[:, :-1]


class CrossGETTower(nn.Module):
    """A ViT vision tower with CrossGET merging: ``forward(pixel_values) -> tokens [B, N', D]``."""

    def __init__(self, vision_model: nn.Module, r: int = DEFAULT_R, cross_token_visible: bool = False) -> None:
        super().__init__()
        if r < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        self.runner = ViTRunner(vision_model)
        self.r = r
        self.cross_token_visible = cross_token_visible
        self.cross_delta = nn.Parameter(torch.zeros(self.runner.num_layers, self.hidden_size))
        self.last_tokens_per_layer: list[int] = []
        self.last_sizes: torch.Tensor | None = None

    @property
    def hidden_size(self) -> int:
        return self.runner.hidden_size

    @property
    def guidance(self) -> str:
        """``"cross-guided"`` once the per-layer deltas are trained (non-zero), else
        ``"self-guided"`` (delta = 0: the cross token is only a CLS copy)."""
        return "cross-guided" if bool(self.cross_delta.detach().abs().sum() > 0) else "self-guided"

    def tokens_per_layer(self) -> list[int]:
        """Image tokens (incl. CLS, excl. the cross token) entering each layer, from ``r``."""
        counts, t = [], self.runner.num_patches + 2  # + CLS + cross
        for _ in range(self.runner.num_layers):
            counts.append(t - 1)
            t -= min(self.r, (t - 2) // 2)
        return counts

    def output_tokens(self) -> int:
        t = self.runner.num_patches + 2
        for _ in range(self.runner.num_layers):
            t -= min(self.r, (t - 2) // 2)
        return t - 1

    def forward_train(self, pixel_values: torch.Tensor) -> CrossGETOutput:
        hooks = _Hooks(self)
        tokens = self.runner(pixel_values, hooks)
        self.last_tokens_per_layer = hooks.tokens_per_layer
        self.last_sizes = hooks.size.squeeze(-1)
        return CrossGETOutput(tokens, self.last_sizes, torch.stack(hooks.cross))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Merged tokens [B, N', D]; sizes of the last call in ``last_sizes``."""
        return self.forward_train(pixel_values).tokens

    # -- what an owner needs beside the (frozen, separately saved) encoder -----------------
    def method_config(self) -> dict:
        """The settings that, with the encoder and :meth:`reduction_state_dict`, fix the tokens."""
        return {"method": "crossget", "r": self.r, "cross_token_visible": self.cross_token_visible}

    def reduction_parameters(self) -> list[nn.Parameter]:
        """The method's own trainable parameters (the per-layer cross-token deltas)."""
        return [self.cross_delta]

    def reduction_state_dict(self) -> dict[str, torch.Tensor]:
        return {"cross_delta": self.cross_delta.detach().clone()}

    def load_reduction_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.cross_delta.copy_(state["cross_delta"])

    def project_cross_tokens(self, cross_tokens: torch.Tensor, projection: nn.Module | torch.Tensor | None = None,
                             norm: nn.LayerNorm | None = None) -> torch.Tensor:
        """Cross tokens [L, B, D] through a layernorm (default: the tower's post-layernorm)
        and a projection, both with detached weights, as the official code does."""
        norm = norm or self.runner.vision.post_layernorm
        x = F.layer_norm(cross_tokens, norm.normalized_shape, norm.weight.detach(),
                         None if norm.bias is None else norm.bias.detach(), norm.eps)
        if projection is None:
            return x
        if isinstance(projection, nn.Linear):
            return F.linear(x, projection.weight.detach(),
                            None if projection.bias is None else projection.bias.detach())
        if isinstance(projection, torch.Tensor):
            return x @ projection.detach()
        raise TypeError("projection must be an nn.Linear, a [D, E] tensor or None")


def cross_alignment_loss(image_cross: torch.Tensor, text_cross: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon-style loss between softmaxed projected cross tokens.

    ``image_cross`` [L, B, E] (every layer); ``text_cross`` [L, B, E] or [B, E] (one text
    token broadcast to every layer). Mean of KL(p || m) and KL(q || m), m = (p + q) / 2,
    averaged over all L * B rows.
    """
    if text_cross.ndim == 2:
        text_cross = text_cross.unsqueeze(0).expand_as(image_cross)
    if text_cross.shape != image_cross.shape:
        raise ValueError(f"cross tokens differ in shape: {tuple(image_cross.shape)} vs {tuple(text_cross.shape)}")
    img = image_cross.reshape(-1, image_cross.shape[-1])
    txt = text_cross.reshape(-1, text_cross.shape[-1])
    mean = (img.softmax(dim=-1) + txt.softmax(dim=-1)) / 2
    return (F.kl_div(img.log_softmax(dim=-1), mean, reduction="batchmean")
            + F.kl_div(txt.log_softmax(dim=-1), mean, reduction="batchmean")) / 2
