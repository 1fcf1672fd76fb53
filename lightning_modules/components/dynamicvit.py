"""DynamicViT token pruning as a vision tower (Rao et al., NeurIPS 2021, arXiv:2106.02034).

A light prediction module before the blocks at 1/4, 1/2 and 3/4 of the depth scores the
patch tokens (never CLS); stage ``s`` keeps ``floor(rho**s * P)`` of the ``P`` *original*
patch tokens (cumulative ratios rho, rho^2, rho^3; default rho = 0.7, the paper's
DynamicViT-0.7). For the tiny 4-layer, 36-patch CLIP tower the stages sit before layers
1, 2, 3 and keep 25, 17, 12 patches (+ CLS): 37 -> 26 -> 18 -> 13 tokens per layer, 0.736x
the unpruned fvcore FLOPs, predictors included; on BLIP-2's 39-layer ViT-g/14 they sit
before layers 9, 19, 29 and keep 179, 125, 87 of 256 patches: 0.626x.

* **Training** (:meth:`DynamicViTTower.forward_train`): hard Gumbel-softmax decisions with
  a straight-through gradient, multiplied into the previous stage's mask; nothing is
  removed, the attention instead ignores dropped tokens (:func:`masked_softmax`). The
  returned ``keep_mask`` must also mask the tokens wherever they are consumed (e.g. the
  Q-Former's cross-attention ``encoder_attention_mask``).
* **Inference** (:meth:`DynamicViTTower.forward`): top-k by keep probability, gathered, so
  the later layers really run on fewer tokens (kept tokens stay in their original order,
  CLS first; attention is permutation-equivariant, so this only makes outputs comparable).

Losses are plain functions, combined by the module that trains the tower:
task + 0.5 * :func:`embedding_distill_loss` + 0.5 * :func:`token_distill_loss` +
2 * :func:`ratio_loss` (:func:`dynamicvit_loss`). The teacher is the same encoder run
unpruned (:meth:`DynamicViTTower.teacher_forward`), which is frozen when the backbone is
frozen (BLIP2); a fine-tuned backbone needs a frozen copy passed as ``teacher``.
Predictors train at full lr, the backbone (if at all) at 0.01x; clip gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.components.vit_runner import TokenHooks, ViTRunner

DEFAULT_KEEP_RATE = 0.7
NUM_STAGES = 3


def pruning_layers(num_layers: int, num_stages: int = NUM_STAGES) -> list[int]:
    """Layers before which a stage prunes: 1/4, 1/2, 3/4 of the depth (12 -> 3, 6, 9)."""
    layers = [num_layers * s // (num_stages + 1) for s in range(1, num_stages + 1)]
    if layers[0] < 1 or len(set(layers)) != num_stages:
        raise ValueError(f"{num_layers} layers cannot hold {num_stages} distinct pruning stages")
    return layers


def keep_counts(num_patches: int, keep_rate: float, num_stages: int = NUM_STAGES) -> list[int]:
    """Patch tokens kept after each stage: floor(rho**s * P) of the original P (196 at
    0.7 -> 137, 96, 67); a tiny tolerance guards against 0.7**2 * 100 = 48.999..."""
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    return [max(1, math.floor(num_patches * keep_rate**s + 1e-6)) for s in range(1, num_stages + 1)]


class PredictorLG(nn.Module):
    """The DynamicViT prediction module: local + policy-weighted global feature -> log p(keep), log p(drop)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
            nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        """``x`` patch tokens [B, P, D], ``policy`` [B, P, 1] -> log-probabilities [B, P, 2] (0 = keep)."""
        x = self.in_conv(x)
        half = x.shape[-1] // 2
        local, glob = x[..., :half], x[..., half:]
        glob = (glob * policy).sum(dim=1, keepdim=True) / policy.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return self.out_conv(torch.cat([local, glob.expand_as(local)], dim=-1))


# (log-probabilities [B, P, 2], previous decisions [B, P]) -> new decisions [B, P]
Sampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gumbel_keep(log_probs: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Hard Gumbel-softmax keep decisions [B, P] with a straight-through gradient."""
    return F.gumbel_softmax(log_probs, tau=tau, hard=True)[..., 0]


@dataclass
class DynamicViTOutput:
    """What training needs from the tower.

    tokens: [B, N, D] all tokens (nothing removed while training), post-layernorm.
    keep_mask: [B, N] final keep decisions (CLS = 1), with straight-through gradient.
    stage_decisions: per stage [B, P] cumulative decisions over the original patches.
    """

    tokens: torch.Tensor
    keep_mask: torch.Tensor
    stage_decisions: list[torch.Tensor]


class _TrainHooks(TokenHooks):
    def __init__(self, tower: DynamicViTTower, sampler: Sampler) -> None:
        self.tower, self.sampler = tower, sampler
        self.policy: torch.Tensor | None = None  # [B, N] incl. CLS
        self.decisions: list[torch.Tensor] = []

    def before_layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i in self.tower.stage_of_layer:
            predictor = self.tower.predictors[self.tower.stage_of_layer[i]]
            b, n = x.shape[:2]
            prev = x.new_ones(b, n - 1) if self.policy is None else self.policy[:, 1:]
            log_probs = predictor(x[:, 1:], prev.unsqueeze(-1))
            decision = self.sampler(log_probs, prev) * prev
            self.decisions.append(decision)
            self.policy = torch.cat([x.new_ones(b, 1), decision], dim=1)
        return x

    def attention_policy(self, i: int, x: torch.Tensor) -> torch.Tensor | None:
        return self.policy


class _InferenceHooks(TokenHooks):
    def __init__(self, tower: DynamicViTTower) -> None:
        self.tower = tower
        self.tokens_per_layer: list[int] = []

    def before_layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        stage = self.tower.stage_of_layer.get(i)
        if stage is not None:
            k = self.tower.keep_counts[stage]
            patches = x[:, 1:]
            if k < patches.shape[1]:
                ones = x.new_ones(x.shape[0], patches.shape[1], 1)
                score = self.tower.predictors[stage](patches, ones)[..., 0]
                keep = score.topk(k, dim=1).indices.sort(dim=1).values  # original order
                patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                x = torch.cat([x[:, :1], patches], dim=1)
        self.tokens_per_layer.append(x.shape[1])
        return x


class DynamicViTTower(nn.Module):
    """A ViT vision tower with DynamicViT pruning: ``forward(pixel_values) -> tokens [B, N', D]``."""

    def __init__(
        self,
        vision_model: nn.Module,
        keep_rate: float = DEFAULT_KEEP_RATE,
        num_stages: int = NUM_STAGES,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.runner = ViTRunner(vision_model)
        self.keep_rate = keep_rate
        self.pruning_layers = pruning_layers(self.runner.num_layers, num_stages)
        self.stage_of_layer = {layer: s for s, layer in enumerate(self.pruning_layers)}
        self.keep_ratios = [keep_rate**s for s in range(1, num_stages + 1)]
        self.keep_counts = keep_counts(self.runner.num_patches, keep_rate, num_stages)
        self.predictors = nn.ModuleList(PredictorLG(self.hidden_size) for _ in range(num_stages))
        # A frozen unpruned teacher; None: the tower's own encoder, unpruned (right when it is frozen).
        self.teacher = None if teacher is None else ViTRunner(teacher).requires_grad_(False)
        self.last_tokens_per_layer: list[int] = []

    @property
    def hidden_size(self) -> int:
        return self.runner.hidden_size

    def tokens_per_layer(self) -> list[int]:
        """Tokens (incl. CLS) entering each layer at inference, from the schedule."""
        counts, n = [], self.runner.num_patches
        for i in range(self.runner.num_layers):
            if i in self.stage_of_layer:
                n = min(n, self.keep_counts[self.stage_of_layer[i]])
            counts.append(n + 1)
        return counts

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Inference: tokens are really removed (top-k, gathered). Records
        ``last_tokens_per_layer``."""
        hooks = _InferenceHooks(self)
        out = self.runner(pixel_values, hooks)
        self.last_tokens_per_layer = hooks.tokens_per_layer
        return out

    def forward_train(
        self, pixel_values: torch.Tensor, tau: float = 1.0, sampler: Sampler | None = None
    ) -> DynamicViTOutput:
        """Training: Gumbel decisions, masked attention, nothing removed. ``sampler`` maps
        (log-probabilities [B, P, 2], previous decisions [B, P]) to decisions [B, P], which
        are then multiplied by the previous ones (default: hard Gumbel, straight-through)."""
        hooks = _TrainHooks(self, sampler or (lambda lp, prev: gumbel_keep(lp, tau)))
        tokens = self.runner(pixel_values, hooks)  # masked softmax with eps = 1e-6, fp32
        keep = hooks.policy if hooks.policy is not None else tokens.new_ones(tokens.shape[:2])
        return DynamicViTOutput(tokens, keep, hooks.decisions)

    @torch.no_grad()
    def teacher_forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The unpruned encoder's tokens [B, 1 + P, D] (no gradient)."""
        return (self.teacher or self.runner)(pixel_values)

    # -- what an owner needs beside the (frozen, separately saved) encoder -----------------
    def method_config(self) -> dict:
        """The settings that, with the encoder and :meth:`reduction_state_dict`, fix the tokens."""
        return {"method": "dynamicvit", "keep_rate": self.keep_rate, "num_stages": len(self.pruning_layers)}

    def reduction_parameters(self) -> list[nn.Parameter]:
        """The method's own trainable parameters (the predictors)."""
        return list(self.predictors.parameters())

    def reduction_state_dict(self) -> dict[str, torch.Tensor]:
        """The predictors' weights only (the encoder is saved by its owner)."""
        return {f"predictors.{k}": v for k, v in self.predictors.state_dict().items()}

    def load_reduction_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.predictors.load_state_dict({k.removeprefix("predictors."): v for k, v in state.items()})


def keep_mask_to_attention_mask(keep_mask: torch.Tensor) -> torch.Tensor:
    """A training ``keep_mask`` [B, N] as a hard 0/1 attention mask over the image tokens
    (e.g. the Q-Former's ``encoder_attention_mask``), so dropped tokens are ignored there too."""
    return (keep_mask.detach() > 0.5).long()


# -- losses ------------------------------------------------------------------------------
def ratio_loss(stage_decisions: list[torch.Tensor], target_ratios: list[float]) -> torch.Tensor:
    """Mean over stages of the batch mean of (kept share of the original patches - target)^2."""
    if len(stage_decisions) != len(target_ratios):
        raise ValueError("one target ratio per stage")
    terms = [((d.mean(dim=1) - t) ** 2).mean() for d, t in zip(stage_decisions, target_ratios, strict=True)]
    return torch.stack(terms).mean()


def token_distill_loss(student: torch.Tensor, teacher: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """MSE between the student's and teacher's final patch tokens, over kept patches only
    (CLS excluded; 0 if nothing is kept). ``keep_mask`` [B, N] incl. CLS at 0."""
    keep = keep_mask[:, 1:] > 0.5
    if not bool(keep.any()):
        return student.sum() * 0.0
    return ((student[:, 1:][keep] - teacher[:, 1:][keep]) ** 2).mean()


def embedding_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Distillation of the final retrieval embedding: mean cosine distance to the teacher's.

    DynamicViT distills class logits with a KL term; a retrieval model has embeddings, so
    the analogue is to keep the pruned embedding pointing where the unpruned one does.
    """
    return (1.0 - F.cosine_similarity(student, teacher.detach(), dim=-1)).mean()


@dataclass(frozen=True)
class DynamicViTLossWeights:
    """DynamicViT loss weights (ViT-S defaults of the paper; lambda_ratio = 5 for ViT-B)."""

    ratio: float = 2.0
    embedding_distill: float = 0.5
    token_distill: float = 0.5


def dynamicvit_loss(
    task_loss: torch.Tensor,
    out: DynamicViTOutput,
    teacher_tokens: torch.Tensor,
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    target_ratios: list[float],
    weights: DynamicViTLossWeights = DynamicViTLossWeights(),
) -> dict[str, torch.Tensor]:
    """Total loss and its parts: task + w_e * embedding + w_t * token distillation + w_r * ratio."""
    parts = {
        "ratio": ratio_loss(out.stage_decisions, target_ratios),
        "embedding_distill": embedding_distill_loss(student_emb, teacher_emb),
        "token_distill": token_distill_loss(out.tokens, teacher_tokens, out.keep_mask),
    }
    total = (
        task_loss
        + weights.ratio * parts["ratio"]
        + weights.embedding_distill * parts["embedding_distill"]
        + weights.token_distill * parts["token_distill"]
    )
    return {"loss": total, "task": task_loss, **parts}
