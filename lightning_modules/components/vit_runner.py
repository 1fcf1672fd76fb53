"""A thin, own forward over the layers of a transformers ViT vision encoder, with hooks.

Token-reduction methods (DynamicViT, CrossGET) must remove or merge tokens *between* and
*inside* encoder layers, which the transformers forward does not allow. :class:`ViTRunner`
re-implements the forward of a ``CLIPVisionModel`` or a ``Blip2VisionModel`` (v5 layout:
``embeddings``, optional ``pre_layrnorm``, ``encoder.layers``, ``post_layernorm``) from the
same sub-modules and parameters (nothing is copied), and calls a :class:`TokenHooks` object
at fixed points of every layer:

``begin(x)``                       after embeddings (+ pre-layernorm): [B, 1 + P, D]
``before_layer(i, x)``             before layer ``i`` (DynamicViT prunes here)
``attention_bias(i, x)``           additive attention bias [B or 1, 1, N or 1, N] (or None)
``attention_policy(i, x)``         DynamicViT keep mask [B, N] for masked softmax (or None)
``after_attention(i, x, q, k)``    after the attention residual, before the MLP (ToMe and
                                   CrossGET merge here); q, k are [B, H, N, head_dim]
``end(x)``                         after the last layer, before the post-layernorm

With no hooks, :meth:`ViTRunner.forward` equals the transformers forward (tested): all
tokens of the last hidden state through the post-layernorm, i.e. what the BLIP2 family's
vision tower returns. Attention without a policy runs through
``F.scaled_dot_product_attention`` (the transformers v5 default); with a policy it runs
the DynamicViT masked softmax in fp32 (:func:`masked_softmax`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.grad_checkpointing import maybe_checkpoint

if TYPE_CHECKING:
    from transformers.models.blip_2.modeling_blip_2 import Blip2Attention, Blip2EncoderLayer, Blip2VisionModel
    from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer, CLIPVisionModel


class TokenHooks:
    """Identity hooks: subclass and override what a method needs."""

    def begin(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def before_layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def attention_bias(self, i: int, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def attention_policy(self, i: int, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def after_attention(self, i: int, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return x

    def end(self, x: torch.Tensor) -> torch.Tensor:
        return x


def masked_softmax(logits: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DynamicViT's softmax with a keep policy (Rao et al., 2021, eq. 8), computed in fp32.

    ``logits`` [B, H, N, N] (already scaled), ``policy`` [B, N] in {0, 1} (may carry a
    straight-through gradient). Weights to dropped key tokens are zeroed, except that every
    token always attends to itself; rows are renormalized with ``eps`` so an all-dropped row
    stays finite. With an all-ones policy it equals the softmax up to ``eps``.
    """
    n = logits.shape[-1]
    keep = policy.to(torch.float32).reshape(policy.shape[0], 1, 1, n)
    eye = torch.eye(n, dtype=torch.float32, device=logits.device).view(1, 1, n, n)
    keep = keep + (1.0 - keep) * eye
    logits = logits.to(torch.float32)
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp() * keep
    return (weights + eps / n) / (weights.sum(dim=-1, keepdim=True) + eps)


def unwrap_vision_model(model: nn.Module) -> nn.Module:
    """The module holding ``embeddings``/``encoder``/``post_layernorm``: follows ``.vision_model``
    (CLIPModel, ``*WithProjection``, Blip2Model, transformers v4 nesting) and ``.model`` (the
    suite's ``ClipVisionTower`` / ``Blip2VisionTower``)."""
    while not hasattr(model, "encoder"):
        inner = getattr(model, "vision_model", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    for name in ("embeddings", "encoder", "post_layernorm"):
        if not hasattr(model, name):
            raise TypeError(f"{type(model).__name__} is not a transformers ViT vision encoder (no .{name})")
    return model


class ViTRunner(nn.Module):
    """Layer-by-layer forward of a CLIP / BLIP-2 vision encoder with :class:`TokenHooks`.

    The wrapped encoder's modules are registered as ``self.vision`` (shared, not copied).
    ``kind`` is ``"clip"`` (separate q/k/v projections, pre-layernorm) or ``"blip2"``
    (fused ``qkv``, no pre-layernorm).
    """

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        # the two layouts this runner knows (unwrap_vision_model checks the common attributes)
        self.vision = cast("CLIPVisionModel | Blip2VisionModel", unwrap_vision_model(vision_model))
        attn = self._layer(0).self_attn
        self.kind = "blip2" if hasattr(attn, "qkv") else "clip"
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.scale
        self.hidden_size = attn.embed_dim
        self.num_layers = len(self.vision.encoder.layers)
        self.num_patches = self.vision.embeddings.num_patches
        self.grad_checkpointing = False  # train.grad_checkpointing (lightning_modules/grad_checkpointing.py)

    @property
    def layers(self) -> nn.ModuleList:
        return self.vision.encoder.layers

    def _layer(self, i: int) -> CLIPEncoderLayer | Blip2EncoderLayer:
        """Encoder layer ``i``, typed (``nn.ModuleList`` items are plain modules to a type checker)."""
        return cast("CLIPEncoderLayer | Blip2EncoderLayer", self.layers[i])

    # -- pieces ------------------------------------------------------------------------
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch + class + position embeddings, then the pre-layernorm where there is one."""
        x = self.vision.embeddings(pixel_values)
        pre = getattr(self.vision, "pre_layrnorm", None)
        return pre(x) if pre is not None else x

    def qkv(self, i: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values of layer ``i`` for the normed input ``h``: each [B, H, N, hd]."""
        attn = self._layer(i).self_attn
        b, n, _ = h.shape
        if self.kind == "blip2":
            fused = cast("Blip2Attention", attn).qkv(h)
            mixed = fused.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            return mixed[0], mixed[1], mixed[2]
        shape = (b, n, self.num_heads, self.head_dim)
        attn = cast("CLIPAttention", attn)
        q = attn.q_proj(h).view(shape).transpose(1, 2)
        k = attn.k_proj(h).view(shape).transpose(1, 2)
        v = attn.v_proj(h).view(shape).transpose(1, 2)
        return q, k, v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None = None,
        policy: torch.Tensor | None = None,
        eps: float = 1e-6,
    ) -> torch.Tensor:
        """Multi-head attention output [B, N, D] (before the output projection)."""
        if policy is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            logits = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            if bias is not None:
                logits = logits + bias
            weights = masked_softmax(logits, policy, eps).to(v.dtype)
            out = torch.matmul(weights, v)
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, self.hidden_size)

    def out_proj(self, i: int, a: torch.Tensor) -> torch.Tensor:
        attn = self._layer(i).self_attn
        if self.kind == "blip2":
            return cast("Blip2Attention", attn).projection(a)
        return cast("CLIPAttention", attn).out_proj(a)

    def mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        layer = self._layer(i)
        return layer.mlp(layer.layer_norm2(x))

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision.post_layernorm(x)

    # -- forward -----------------------------------------------------------------------
    def attention_block(
        self, i: int, x: torch.Tensor, bias: torch.Tensor | None, policy: torch.Tensor | None, eps: float = 1e-6
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer ``i``'s pre-norm attention with its residual, and its queries and keys (for the hooks)."""
        q, k, v = self.qkv(i, self._layer(i).layer_norm1(x))
        return x + self.out_proj(i, self.attend(q, k, v, bias, policy, eps)), q, k

    def mlp_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(i, x)

    def layer(self, i: int, x: torch.Tensor, hooks: TokenHooks, eps: float = 1e-6) -> torch.Tensor:
        """One encoder layer (pre-norm attention, then pre-norm MLP) with the inside hooks. With
        ``grad_checkpointing`` the two blocks (not the hooks, which carry state across layers)
        recompute their activations in the backward pass."""
        bias, policy = hooks.attention_bias(i, x), hooks.attention_policy(i, x)
        x, q, k = maybe_checkpoint(self.grad_checkpointing, self.attention_block, i, x, bias, policy, eps)
        x = hooks.after_attention(i, x, q, k)
        return maybe_checkpoint(self.grad_checkpointing, self.mlp_block, i, x)

    def forward(self, pixel_values: torch.Tensor, hooks: TokenHooks | None = None) -> torch.Tensor:
        """Tokens [B, N', D]: the last hidden state through the post-layernorm."""
        hooks = hooks or TokenHooks()
        x = hooks.begin(self.embed(pixel_values))
        for i in range(self.num_layers):
            x = hooks.before_layer(i, x)
            x = self.layer(i, x, hooks)
        return self.post(hooks.end(x))
