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

Implementation: every step of the matching and the merge is one batched tensor operation
with shapes fixed by ``(B, t, r)`` (no per-image or per-token Python loop, no host
synchronisation, constants such as the pair masks and row offsets cached per shape), so
the forward can be captured as a CUDA graph. Its cost beside the FLOPs is the number of
operators each layer dispatches: on a GPU at small per-layer work each one is a kernel
launch issued by the host, which then bounds the forward (see
scripts/bench_token_reduction.py, ``ops_per_forward``).

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


NEG = float("-inf")


def _constant(build):
    """Cache a constant tensor builder by its (hashable) arguments. The tensor is built outside
    inference mode (so a cached constant can also serve a later training forward) and is
    never written to."""

    @functools.lru_cache(maxsize=256)
    def cached(*args):
        with torch.inference_mode(False), torch.no_grad():
            return build(*args)

    return functools.wraps(build)(cached)


@_constant
def _pair_masks(t: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two [t, t] masks: ``excluded``, True where a pair never matches (self pairs, and any
    pair with CLS (0) or the cross token (t - 1)); ``later``, True where b > a."""
    excluded = torch.eye(t, dtype=torch.bool, device=device)
    excluded[[0, -1], :] = True
    excluded[:, [0, -1]] = True
    return excluded, torch.ones(t, t, dtype=torch.bool, device=device).triu(1)


@_constant
def _hidden_cross_token(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """[n, n] additive bias: -inf where a token other than the cross token (n - 1) would attend to it."""
    hide = torch.zeros(n, n, dtype=dtype, device=device)
    hide[:-1, -1] = NEG
    return hide


@_constant
def _row_offsets(b: int, t: int, device: str) -> torch.Tensor:
    """[b, 1] offsets ``i * t`` that turn per-image token indices into rows of a [b * t] flattening."""
    return torch.arange(b, device=device).unsqueeze(1) * t


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)`` without dispatching an operator when it already has that dtype."""
    return x if x.dtype == dtype else x.to(dtype)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=-1)`` in fp32 (the same arithmetic, without its expand)."""
    x = _cast(x, torch.float32)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def complete_graph_match(metric: torch.Tensor, query: torch.Tensor, r: int) -> Matching:
    """CrossGET's complete-graph soft matching with cross-guided importance.

    ``metric`` [B, t, c] keys (token 0 = CLS and token t-1 = cross token are protected),
    ``query`` [B, c] the cross token's query. ``r`` must be <= (t - 2) // 2.

    Batched throughout, fixed shapes, no host synchronisation: every step is one tensor
    operation over the whole batch (few operations, as on a GPU each is a kernel launch).
    """
    b, t, _ = metric.shape
    excluded, later = _pair_masks(t, str(metric.device))
    m = _unit(metric)
    sim = (m @ m.transpose(-1, -2)).masked_fill(excluded, NEG)
    importance = (m @ _unit(query).unsqueeze(-1)).squeeze(-1)  # [B, t]
    # Rank tokens by their best match (ties by position); a token may only count partners
    # ranked after it: b is after a iff best_b < best_a, or best_b == best_a and b > a.
    # Pairwise comparisons instead of sorts: fewer, cheaper kernels.
    best = sim.amax(dim=-1)
    best_a, best_b = best.unsqueeze(2), best.unsqueeze(1)  # [B, a, 1], [B, 1, b]
    not_after = torch.where(later, best_b > best_a, best_b >= best_a)
    best_allowed = sim.masked_fill(not_after, NEG).amax(dim=-1)
    score = importance - best_allowed  # protected and last-ranked tokens: +inf, never sources
    src = score.topk(r, dim=1, largest=False).indices
    # the other tokens, ascending: a stable sort puts the kept (0) before the sources (1)
    is_src = torch.zeros(b, t, dtype=torch.uint8, device=metric.device).scatter_(1, src, 1)
    dst_all = is_src.argsort(dim=1, stable=True)[:, : t - r]
    sim_sd = sim.gather(1, src.unsqueeze(-1).expand(b, r, t)).gather(2, dst_all.unsqueeze(1).expand(b, r, t - r))
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
    device = str(x.device)
    base = _row_offsets(b, t, device)
    src = (match.src + base).view(-1)
    keep = (match.dst_all + base).view(-1)
    dst = (match.dst + _row_offsets(b, t - r, device)).view(-1)  # rows of the kept tokens
    flat_size = size.reshape(b * t)
    s_src = flat_size.index_select(0, src)
    s_kept = flat_size.index_select(0, keep)
    s_dst = s_kept.index_select(0, dst)  # sizes before the merge
    new_size = s_kept.index_add(0, dst, s_src)
    s_new = new_size.index_select(0, dst)
    flat_x = x.reshape(b * t, d)
    kept = flat_x.index_select(0, keep)
    x_src = flat_x.index_select(0, src)
    x_dst = kept.index_select(0, dst)
    w_src, w_dst = match.weight.reshape(b * r, 2).unbind(1)
    coef_src = _cast(w_src * s_src / s_new, x.dtype).unsqueeze(1)
    coef_dst = _cast(((w_dst - 1.0) * s_dst - s_src) / s_new, x.dtype).unsqueeze(1)
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
        self.deltas: torch.Tensor | None = None
        self.cross: list[torch.Tensor] = []
        self.tokens_per_layer: list[int] = []

    def begin(self, x: torch.Tensor) -> torch.Tensor:
        self.size = torch.ones(x.shape[0], x.shape[1] + 1, 1, device=x.device)  # fp32: exact counts
        self.deltas = _cast(self.tower.cross_delta, x.dtype)  # once per forward, not per layer
        return torch.cat([x, x[:, :1]], dim=1)  # cross token seeded from CLS

    # size and deltas are set by begin(), which the runner calls before any other hook
    def before_layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        assert self.deltas is not None
        cross = x[:, -1].detach() + self.deltas[i]
        self.cross.append(cross)
        self.tokens_per_layer.append(x.shape[1] - 1)
        x[:, -1] = cross  # in place: x is a fresh tensor (embedding concat or residual sum)
        return x

    def attention_bias(self, i: int, x: torch.Tensor) -> torch.Tensor:
        assert self.size is not None
        b, n = x.shape[:2]
        bias = _cast(self.size.log(), x.dtype).view(b, 1, 1, n)  # proportional attention
        if not self.tower.cross_token_visible:  # nobody but itself attends to the cross token
            bias = bias + _hidden_cross_token(n, x.dtype, str(x.device))
        return bias

    def after_attention(self, i: int, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        r = min(self.tower.r, (x.shape[1] - 2) // 2)
        if r <= 0:
            return x
        assert self.size is not None
        match = complete_graph_match(k.mean(dim=1), q[:, :, -1].mean(dim=1), r)  # keys, cross query
        x, self.size = merge_tokens(x, self.size, match)
        return x

    def end(self, x: torch.Tensor) -> torch.Tensor:
        assert self.size is not None
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
        assert hooks.size is not None  # set by the hooks' begin()
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

    def project_cross_tokens(
        self,
        cross_tokens: torch.Tensor,
        projection: nn.Module | torch.Tensor | None = None,
        norm: nn.LayerNorm | None = None,
    ) -> torch.Tensor:
        """Cross tokens [L, B, D] through a layernorm (default: the tower's post-layernorm)
        and a projection, both with detached weights, as the official code does."""
        norm = norm or self.runner.vision.post_layernorm
        x = F.layer_norm(
            cross_tokens,
            norm.normalized_shape,
            norm.weight.detach(),
            None if norm.bias is None else norm.bias.detach(),
            norm.eps,
        )
        if projection is None:
            return x
        if isinstance(projection, nn.Linear):
            return F.linear(
                x, projection.weight.detach(), None if projection.bias is None else projection.bias.detach()
            )
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
    return (
        F.kl_div(img.log_softmax(dim=-1), mean, reduction="batchmean")
        + F.kl_div(txt.log_softmax(dim=-1), mean, reduction="batchmean")
    ) / 2
