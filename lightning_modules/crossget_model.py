"""CrossGET as a BLIP-2 retrieval baseline (``--model crossget``).

CrossGET (Shi et al., ICML 2024, arXiv:2305.17455) on the frozen vision tower of the BLIP2
checkpoint it starts from (:mod:`lightning_modules.token_reduction_model`): every layer
merges a constant ``r`` tokens by complete-graph soft matching guided by a learnable cross
token, with a cross-guided weighted ensemble, size tracking and proportional attention
(:class:`~lightning_modules.components.crossget.CrossGETTower`). ``r`` defaults to 6 on the
tiny 4-layer tower (37 -> 13 tokens, 0.716x its FLOPs) and to 5 on BLIP-2's ViT-g/14
(62 tokens out of 257, 0.617x).

* **Q-Former**: sees the merged tokens, each once (default). With ``proportional_attention``
  its cross-attention adds ``log(size)`` to each merged token's logit, as the tower's own
  attention does, so a token standing for ``s`` patches weighs in as they would have -- in
  the ITC pass and in ITM re-ranking alike. Off by default.
* **Training**: ``0.5 * ITC + 0.5 *`` the cross-token alignment loss (Jensen-Shannon between
  the softmaxed projections of the image cross token of every layer and of the text). The
  adapter onto BLIP-2 is ours: the text side is the Q-Former's projected text CLS embedding
  (detached: CrossGET is not applied to the text side here), the image side goes through the
  tower's post-layernorm (detached weights) and a learnable linear projection to the
  Q-Former's embedding space (``cross_projection``; BLIP-2 has no vision-to-text projection
  that could stand in for CLIP's). ITC only reaches parameters when the Q-Former trains
  (``finetune_qformer``) or other tokens attend to the cross token (``cross_token_visible``);
  otherwise it is skipped (matching and ensemble weights carry no gradient).
* **Mode**: untrained (``train.max_epochs = 0``, deltas zero) the merge is *self-guided*;
  trained it is *cross-guided*: the result file states which (``method.guidance``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.batch import TrainBatch
from lightning_modules.components import image_attention
from lightning_modules.components.blip2_losses import batch_itc
from lightning_modules.components.crossget import DEFAULT_R, CrossGETTower, cross_alignment_loss
from lightning_modules.token_reduction_model import TokenReductionConfig, TokenReductionRetrieval

#: r on BLIP-2's 39-layer ViT-g/14 (256 patches): 0.617x its FLOPs, close to DynamicViT-0.7's 0.626x
FULL_R = 5


@dataclass(frozen=True)
class CrossGETConfig(TokenReductionConfig):
    """The shared token-reduction options plus:

    r: tokens merged per layer (None: 6 tiny, 5 full; 0 = no merging).
    cross_token_visible: other tokens attend to the cross token (the official behaviour;
        off by default on a frozen tower, see the component).
    proportional_attention: the Q-Former's cross-attention adds log(size) of merged tokens.
    itc_weight, alignment_weight: the training loss weights (CrossGET: 0.5 and 0.5).
    """

    r: int | None = None
    cross_token_visible: bool = False
    proportional_attention: bool = False
    itc_weight: float = 0.5
    alignment_weight: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r is not None and self.r < 0:
            raise ValueError(f"model_args.r must be >= 0 or null, got {self.r}")
        if self.itc_weight < 0 or self.alignment_weight < 0:
            raise ValueError("model_args.itc_weight and alignment_weight must be >= 0")
        if self.itm_weight != 0:
            raise ValueError(
                "model_args.itm_weight must be 0: CrossGET trains with ITC + the alignment loss "
                "(evaluation still re-ranks with ITM, see k_test)"
            )

    @property
    def merge_r(self) -> int:
        return self.r if self.r is not None else (FULL_R if self.pretrained else DEFAULT_R)


class CrossGETRetrieval(TokenReductionRetrieval):
    """BLIP-2 with CrossGET token merging in its vision tower (see the module docstring)."""

    Config = CrossGETConfig
    config: CrossGETConfig
    reducer: CrossGETTower
    method = "crossget"

    def __init__(self, vision_tower, head, tokenizer, config: CrossGETConfig, optim=None) -> None:
        super().__init__(vision_tower, head, tokenizer, config, optim)
        self.cross_projection = nn.Linear(self.reducer.hidden_size, head.shape.embed_dim)

    # narrows the config to this model's own Config (the runner passes cls.Config): an override mypy flags
    @classmethod
    def build_reducer(cls, vision_tower, config: CrossGETConfig) -> CrossGETTower:  # type: ignore[override]
        return CrossGETTower(vision_tower.model, r=config.merge_r, cross_token_visible=config.cross_token_visible)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"cross_projection": self.cross_projection}

    def reduce(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.reducer.forward_train(pixel_values)
        return out.tokens, image_attention.size_bias(out.sizes) if self.config.proportional_attention else None

    def method_config(self) -> dict:
        return super().method_config() | {
            "guidance": self.reducer.guidance,
            "proportional_attention": self.config.proportional_attention,
            "tokens_per_layer": self.reducer.tokens_per_layer(),
            "output_tokens": self.reducer.output_tokens(),
        }

    @property
    def itc_trains(self) -> bool:
        """Whether ITC reaches any trainable parameter (else it is skipped)."""
        return self.config.finetune_qformer or self.config.cross_token_visible

    def _losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        index, images, texts = batch.index, batch.items, batch.texts
        index, images = index.to(self.device), images.to(self.device)
        cfg = self.config
        out = self.reducer.forward_train(images)
        ids, mask = self.tokenize(texts)
        with torch.set_grad_enabled(cfg.finetune_qformer and torch.is_grad_enabled()):
            text = self.text_projection(ids, mask)
        image_cross = self.cross_projection(self.reducer.project_cross_tokens(out.cross_tokens))  # [L, B, E]
        losses = {"alignment": cross_alignment_loss(image_cross, text.detach())}
        loss = cfg.alignment_weight * losses["alignment"]
        if self.itc_trains and cfg.itc_weight > 0:
            bias = image_attention.size_bias(out.sizes) if cfg.proportional_attention else None
            img = self.head.image_feats(
                image_attention.query_outputs(self.head, self.head.query_tokens, out.tokens, bias)
            )
            if cfg.finetune_qformer:
                with torch.no_grad():
                    self.head.temp.clamp_(0.001, 0.5)
            everyone = self.global_batch(len(index))  # DDP: negatives from every process (cross_rank)
            losses["itc"], _ = batch_itc(
                img, F.normalize(text, dim=-1), index, self.head.temp, cfg.itc_label_smoothing, everyone
            )
            loss = loss + cfg.itc_weight * losses["itc"]
        return losses | {"loss": loss}
