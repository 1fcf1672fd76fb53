"""DynamicViT as a BLIP-2 retrieval baseline (``--model dynamicvit``).

DynamicViT (Rao et al., NeurIPS 2021, arXiv:2106.02034) on the frozen vision tower of the
BLIP2 checkpoint it starts from (:mod:`lightning_modules.token_reduction_model`): prediction
modules before the layers at 1/4, 1/2 and 3/4 of the depth keep ``floor(rho^s P)`` of the
``P`` original patches (rho = ``keep_rate``, default 0.7), CLS always kept
(:class:`~lightning_modules.components.dynamicvit.DynamicViTTower`).

* **Inference**: top-k by keep probability, really removed: the Q-Former cross-attends to
  ``1 + floor(rho^3 P)`` tokens (13 of 37 on the tiny tower), in the ITC pass and in ITM
  re-ranking alike.
* **Training** (predictors; the Q-Former too with ``finetune_qformer``): hard Gumbel-softmax
  decisions, masked attention inside the tower, and the same keep mask on the Q-Former's
  cross-attention (a dropped token is attended by nobody). Loss = retrieval (ITC, + ITM with
  ``itm_weight``) + 0.5 * embedding distillation (cosine distance of each query output's
  image feature to the unpruned teacher's) + 0.5 * token distillation (MSE of the final kept
  tokens) + 2 * ratio loss -- DynamicViT's ViT-S weights. Under DDP the ITC takes its
  negatives from every process (:mod:`~lightning_modules.components.cross_rank`); the ITM
  negatives (``itm_weight > 0``) stay within the process, whose pruned tokens they need. The teacher is the checkpoint's
  unpruned frozen tower and its Q-Former (a frozen copy of it when the Q-Former trains).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch

from datamodules.batch import TrainBatch
from lightning_modules.components import image_attention
from lightning_modules.components.blip2_losses import batch_itc, itm_loss
from lightning_modules.components.dynamicvit import (
    DEFAULT_KEEP_RATE,
    NUM_STAGES,
    DynamicViTLossWeights,
    DynamicViTTower,
    PredictorLG,
    dynamicvit_loss,
)
from lightning_modules.token_reduction_model import TokenReductionConfig, TokenReductionRetrieval


@dataclass(frozen=True)
class DynamicViTConfig(TokenReductionConfig):
    """The shared token-reduction options plus:

    keep_rate: rho; stage s keeps floor(rho^s P) of the P original patches (1.0 = no pruning).
    num_stages: pruning stages, evenly spaced over the depth (DynamicViT: 3).
    gumbel_tau: temperature of the Gumbel-softmax decisions while training.
    ratio_weight, embedding_distill_weight, token_distill_weight: DynamicViT's loss weights
        (ViT-S defaults 2, 0.5, 0.5; the paper uses ratio 5 for ViT-B).
    """

    keep_rate: float = DEFAULT_KEEP_RATE
    num_stages: int = NUM_STAGES
    gumbel_tau: float = 1.0
    ratio_weight: float = 2.0
    embedding_distill_weight: float = 0.5
    token_distill_weight: float = 0.5
    init_keep_bias: bool = True
    masked_cross_attention: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.keep_rate <= 1.0:
            raise ValueError(f"model_args.keep_rate must be in (0, 1], got {self.keep_rate}")
        if self.num_stages < 1:
            raise ValueError("model_args.num_stages must be >= 1")
        if self.gumbel_tau <= 0:
            raise ValueError("model_args.gumbel_tau must be > 0")
        if min(self.ratio_weight, self.embedding_distill_weight, self.token_distill_weight) < 0:
            raise ValueError("model_args.ratio_weight, embedding_distill_weight, token_distill_weight must be >= 0")

    def loss_weights(self) -> DynamicViTLossWeights:
        return DynamicViTLossWeights(self.ratio_weight, self.embedding_distill_weight, self.token_distill_weight)


class DynamicViTRetrieval(TokenReductionRetrieval):
    """BLIP-2 with DynamicViT token pruning in its vision tower (see the module docstring)."""

    Config = DynamicViTConfig
    config: DynamicViTConfig
    reducer: DynamicViTTower
    method = "dynamicvit"

    # narrows the config to this model's own Config (the runner passes cls.Config): an override mypy flags
    @classmethod
    def build_reducer(cls, vision_tower, config: DynamicViTConfig) -> DynamicViTTower:  # type: ignore[override]
        tower = DynamicViTTower(vision_tower.model, keep_rate=config.keep_rate, num_stages=config.num_stages)
        if config.init_keep_bias and config.keep_rate < 1.0:
            # each stage keeps a share rho of the tokens still kept: start every predictor there
            with torch.no_grad():
                for predictor in tower.predictors:
                    last = cast(torch.nn.Linear, cast(PredictorLG, predictor).out_conv[-2])
                    last.bias.copy_(torch.tensor([math.log(config.keep_rate), math.log(1.0 - config.keep_rate)]))
        return tower

    def reduce(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.reducer(pixel_values), None

    def method_config(self) -> dict:
        return super().method_config() | {
            "keep_counts": list(self.reducer.keep_counts),
            "pruning_layers": list(self.reducer.pruning_layers),
            "tokens_per_layer": self.reducer.tokens_per_layer(),
        }

    @property
    def qformer_checkpointable(self) -> bool:
        """Not with ``masked_cross_attention``: its keep mask is patched into the Q-Former's
        cross-attention only for the duration of the forward (``image_attention.policy_cross_attention``)."""
        return not self.config.masked_cross_attention

    def _losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        index, images, texts = batch.index, batch.items, batch.texts
        index, images = index.to(self.device), images.to(self.device)
        cfg = self.config
        out = self.reducer.forward_train(images, tau=cfg.gumbel_tau)
        bias = image_attention.keep_bias(out.keep_mask)
        if cfg.masked_cross_attention:
            with image_attention.policy_cross_attention(self.head, out.keep_mask):
                img = self.head.image_feats(self.head.query_outputs(self.head.query_tokens, out.tokens))
        else:
            img = self.head.image_feats(
                image_attention.query_outputs(self.head, self.head.query_tokens, out.tokens, bias)
            )
        teacher_tokens, teacher_img = self.teacher_feats(images)
        ids, mask = self.tokenize(texts)
        with torch.set_grad_enabled(cfg.finetune_qformer and torch.is_grad_enabled()):
            txt = self.text_features(ids, mask)
        if cfg.finetune_qformer:
            with torch.no_grad():
                self.head.temp.clamp_(0.001, 0.5)
        everyone = self.global_batch(len(index))  # DDP: ITC negatives from every process (cross_rank)
        loss_itc, blocks = batch_itc(img, txt, index, self.head.temp, cfg.itc_label_smoothing, everyone)
        parts = {"itc": loss_itc}
        task = parts["itc"]
        if cfg.itm_weight > 0:
            # ITM negatives from this process's items: the pruned tokens and keep masks stay local
            img_i, txt_i, labels = self.itm_training_pairs(blocks if everyone is None else blocks.local(everyone.local))
            if cfg.masked_cross_attention:
                with image_attention.policy_cross_attention(self.head, out.keep_mask[img_i]):
                    logits = self.head.itm_logits(out.tokens[img_i], ids[txt_i], mask[txt_i])
            else:
                logits = image_attention.itm_logits(self.head, out.tokens[img_i], ids[txt_i], mask[txt_i], bias[img_i])
            parts["itm"] = itm_loss(logits, labels)
            task = task + cfg.itm_weight * parts["itm"]
        losses = dynamicvit_loss(
            task, out, teacher_tokens, img, teacher_img, self.reducer.keep_ratios, cfg.loss_weights()
        )
        kept = [d.mean().detach() for d in out.stage_decisions]
        return losses | parts | {f"keep_ratio_{s}": k for s, k in enumerate(kept)}
