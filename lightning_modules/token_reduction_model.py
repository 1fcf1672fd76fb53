"""The shared base of the token-reduction baselines (``--model dynamicvit`` / ``crossget``).

Both baselines are BLIP-2 retrieval models (:class:`~lightning_modules.blip2.Blip2Retrieval`:
Q-Former head, ITC + ITM re-ranking, the same scoring) whose vision tower reduces its
tokens. They start from the same checkpoint as BLIP2-IDQ-Former: the tiny BLIP2 suite
checkpoint trained on the same data (``blip2_checkpoint``, resolved and trained if needed by
the runner) or, at full size, a ``Blip2ForImageTextRetrieval`` checkpoint (``pretrained``).

* ``vision_tower`` stays the checkpoint's frozen, unpruned tower: it is what is saved (so
  the checkpoint layout is BLIP2's) and DynamicViT's distillation teacher;
* ``reducer`` is the method's tower (:class:`~lightning_modules.components.dynamicvit.
  DynamicViTTower` or :class:`~lightning_modules.components.crossget.CrossGETTower`)
  wrapping the *same* backbone modules (nothing copied); its own parameters (predictors,
  cross tokens, ...) are saved in ``<method>.safetensors`` and loaded strictly;
* the feature cache is off: the reduced tokens depend on trained parameters and on the
  image, not only on the frozen backbone (so the model needs pixels, never cached tokens);
* the Q-Former is frozen unless ``finetune_qformer`` (then it trains with the method), so
  that by default every difference to BLIP2 comes from the token reduction alone;
* the image tokens the Q-Former sees may carry a cross-attention bias (dropped tokens,
  merged-token sizes: :mod:`~lightning_modules.components.image_attention`); in the
  evaluation the bias travels packed with the tokens as one extra channel, so ITM
  re-ranking applies it too.

A subclass says how to build its reducer, how to reduce pixels at inference (tokens and an
optional bias), its training losses and its parameters beside the reducer's.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer

from datamodules.batch import TrainBatch
from lightning_modules.base import Encoded
from lightning_modules.blip2 import (
    CONFIG_FILE,
    HEAD_DIR,
    IMAGE_TOKENS,
    TOWER_DIR,
    Blip2Config,
    Blip2Retrieval,
    load_pretrained_parts,
)
from lightning_modules.components import image_attention
from lightning_modules.components.qformer_head import QFormerHead
from lightning_modules.components.vision_tower import LoadingError, load_saved_tower
from lightning_modules.components.vit_runner import ViTRunner
from lightning_modules.optim import OptimConfig, build_optimizer


@dataclass(frozen=True)
class TokenReductionConfig(Blip2Config):
    """BLIP2's options (its tiny-architecture fields are unused: the Q-Former comes from
    ``blip2_checkpoint`` or ``pretrained``) plus:

    blip2_checkpoint: tiny: the BLIP2 suite checkpoint to start from (None: the runner
        trains / finds the tiny BLIP2 of the same dataset and seed).
    finetune_qformer: train the Q-Former head (with the retrieval loss) beside the method's
        parameters; False (default) keeps BLIP2's Q-Former, so the comparison isolates the
        token reduction, and a step needs no Q-Former weight gradients.
    cache_features: must stay False (the reduced tokens are not a frozen function of the
        image: they depend on the method's trained parameters).
    itm_weight: the ITM loss beside ITC while training (default 0: a frozen Q-Former's ITM
        head gains nothing, and ITM doubles the step cost); evaluation re-ranks with ITM
        as BLIP2 does (``k_test``).
    """

    blip2_checkpoint: str | None = None
    finetune_qformer: bool = False
    cache_features: bool = False
    itm_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cache_features:
            raise ValueError(
                "model_args.cache_features must be false for a token-reduction model: its vision "
                "tokens depend on trained parameters, so the frozen-feature cache does not apply"
            )
        if self.itm_weight < 0:
            raise ValueError("model_args.itm_weight must be >= 0")


class TokenReducer(Protocol):
    """What the base uses of a method's tower (an ``nn.Module``: ``DynamicViTTower``, ``CrossGETTower``)."""

    runner: ViTRunner

    def method_config(self) -> dict: ...

    def reduction_parameters(self) -> list[nn.Parameter]: ...

    def reduction_state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_reduction_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class TokenReductionRetrieval(Blip2Retrieval):
    """BLIP-2 with a token-reducing vision tower (see the module docstring)."""

    Config = TokenReductionConfig
    config: TokenReductionConfig
    reducer: TokenReducer
    #: config fields the runner fills with the checkpoint of another registered model (tiny size)
    checkpoint_dependencies: ClassVar[dict[str, str]] = {"blip2_checkpoint": "blip2"}
    #: the method's name, and the file its own parameters are saved in
    method = ""

    def __init__(
        self, vision_tower, head: QFormerHead, tokenizer, config: TokenReductionConfig, optim: OptimConfig | None = None
    ) -> None:
        super().__init__(vision_tower, head, tokenizer, config, optim)
        self.head.requires_grad_(config.finetune_qformer)
        if config.finetune_qformer and getattr(config, "freeze_qformer", False):  # BLIP2's partial freeze
            self.head.qformer.requires_grad_(False)
            self.head.embeddings.requires_grad_(False)
        self.reducer = self.build_reducer(vision_tower, config)
        # the unpruned teacher's Q-Former: the head itself while it is frozen, else a frozen copy
        self.teacher_head = copy.deepcopy(head).requires_grad_(False) if config.finetune_qformer else None

    # -- what a method provides ------------------------------------------------------------
    @classmethod
    def build_reducer(cls, vision_tower, config: TokenReductionConfig) -> TokenReducer:
        raise NotImplementedError

    def reduce(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inference: reduced tokens ``[B, N', D]`` and an optional cross-attention bias ``[B, N']``."""
        raise NotImplementedError

    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable modules of the method beside the reducer (saved with it)."""
        return {}

    def method_config(self) -> dict:
        """What the result file records about the method (``result["method"]``)."""
        return self.reducer.method_config() | {"finetune_qformer": self.config.finetune_qformer}

    # -- construction ------------------------------------------------------------------
    @property
    def weights_file(self) -> str:
        return f"{self.method}.safetensors"

    # narrows the config to this model's own Config (the runner passes cls.Config): an override mypy flags
    @classmethod
    def create(  # type: ignore[override]
        cls, config: TokenReductionConfig, optim: OptimConfig, vocab_texts: Sequence[str] = ()
    ) -> TokenReductionRetrieval:
        """From a pretrained BLIP-2 checkpoint (full) or the tiny BLIP2 suite checkpoint (tiny)."""
        if config.pretrained:
            tower, head, tok = load_pretrained_parts(config.pretrained, config.local_files_only, config.temp_init)
        else:
            if not config.blip2_checkpoint:
                raise ValueError(
                    f"a tiny {cls.method} model needs model_args.blip2_checkpoint (a BLIP2 checkpoint; "
                    "the runner resolves it to the tiny BLIP2 of the same dataset and seed)"
                )
            base = Blip2Retrieval.load_checkpoint(Path(config.blip2_checkpoint))
            tower, head, tok = base.vision_tower, base.head, base.tokenizer
        return cls(tower, head, tok, config, optim)

    def reduction_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"reducer.{k}": v for k, v in self.reducer.reduction_state_dict().items()}
        for name, module in self.extra_modules().items():
            state |= {f"{name}.{k}": v for k, v in module.state_dict().items()}
        return state

    def save_checkpoint(self, directory: Path) -> None:
        super().save_checkpoint(directory)  # unpruned tower, head, tokenizer, config
        save_file(
            {k: v.detach().contiguous() for k, v in self.reduction_state_dict().items()},
            Path(directory) / self.weights_file,
        )

    @classmethod
    def load_checkpoint(cls, directory: Path) -> TokenReductionRetrieval:
        directory = Path(directory)
        config = cls.Config(**json.loads((directory / CONFIG_FILE).read_text()))
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = cls(
            load_saved_tower(directory, TOWER_DIR, config.local_files_only),
            QFormerHead.load(directory / HEAD_DIR),
            tok,
            config,
        )
        model.load_reduction_state_dict(load_file(directory / model.weights_file), str(directory / model.weights_file))
        return model

    def load_reduction_state_dict(self, state: dict[str, torch.Tensor], where: str = "state") -> None:
        """Strict: every expected tensor present with its shape, nothing else."""
        expected = self.reduction_state_dict()
        missing, unused = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or unused or mismatched:
            raise LoadingError(
                f"{where}: {self.method} weights do not match the model: missing {missing}, "
                f"unused {unused}, mis-shaped {mismatched}"
            )
        self.reducer.load_reduction_state_dict({k[8:]: v for k, v in state.items() if k.startswith("reducer.")})
        for name, module in self.extra_modules().items():
            module.load_state_dict(
                {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{name}.")}, strict=True
            )

    @property
    def qformer_checkpointable(self) -> bool:
        """Whether the Q-Former's layers may be checkpointed (not where a method patches them for the
        duration of its forward only: a recomputation in the backward pass would run without the patch)."""
        return True

    def enable_grad_checkpointing(self) -> None:
        """``train.grad_checkpointing``: the reducer's ViT layers (frozen, but the method's gradients flow
        through them) and the Q-Former (when it trains, and ``qformer_checkpointable``) recompute their
        activations in the backward pass."""
        self.reducer.runner.grad_checkpointing = True
        if self.qformer_checkpointable:
            super().enable_grad_checkpointing()

    def item_loader(self, cache_root: Path) -> None:
        """No feature cache: the reduced tokens are not a frozen function of the image."""
        return None

    def train(self, mode: bool = True) -> TokenReductionRetrieval:
        """The backbone (shared with the reducer), a frozen Q-Former and the teacher stay in eval mode."""
        super().train(mode)
        cast(nn.Module, self.vision_tower).eval()  # every tower is a module (VisionTower does not say so)
        if not self.config.finetune_qformer:
            self.head.eval()
        if self.teacher_head is not None:
            self.teacher_head.eval()
        return self

    # -- building blocks ---------------------------------------------------------------
    def vision_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Reduced tokens of pixels ``[B, 3, H, W]``, their bias packed as a last channel if any."""
        if images.ndim != 4:
            raise ValueError(
                f"{self.method} reduces tokens inside the vision tower: it needs pixels [B, 3, H, W], "
                f"got a tensor of shape {tuple(images.shape)}"
            )
        with torch.no_grad():
            tokens, bias = self.reduce(images.to(self.device))
        return tokens if bias is None else image_attention.pack(tokens, bias)

    def _split(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if image_tokens.shape[-1] == self.vision_tower.hidden_size + 1:
            return image_attention.unpack(image_tokens)
        return image_tokens, None

    def itm_scores(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class-1 ITM logit of row-paired images and texts, with the image tokens' bias."""
        tokens, bias = self._split(image_tokens.to(self.device))
        n = int(attention_mask.sum(1).max())
        return image_attention.itm_logits(
            self.head, tokens, input_ids[:, :n].to(self.device), attention_mask[:, :n].to(self.device), bias
        )[:, 1]

    def encode_images(self, pixel_values: torch.Tensor) -> Encoded:
        packed = self.vision_tokens(pixel_values)
        tokens, bias = self._split(packed)
        out = image_attention.query_outputs(self.head, self.head.query_tokens, tokens, bias)
        return Encoded(self.head.image_feats(out), extra={IMAGE_TOKENS: packed})

    def teacher_feats(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unpruned teacher: (its tokens ``[B, 1 + P, D]``, its image features ``[B, Q, E]``)."""
        head = self.head if self.teacher_head is None else self.teacher_head
        with torch.no_grad():
            tokens = self.vision_tower(pixel_values.to(self.device))
            return tokens, head.image_feats(head.query_outputs(head.query_tokens, tokens))

    def text_projection(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The projected text CLS embedding before normalisation ``[B, E]``."""
        emb = self.head.embeddings(input_ids=input_ids)
        out = self.head.qformer(query_embeds=emb, query_length=0, attention_mask=attention_mask)
        return self.head.text_projection(out.last_hidden_state[:, 0, :])

    # -- training ----------------------------------------------------------------------
    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        n = len(batch)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        for k, v in losses.items():
            if k != "loss":
                self.log(f"train/{k}", v, batch_size=n)
        return losses["loss"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.reducer.reduction_parameters())
        for module in self.extra_modules().values():
            params += list(module.parameters())
        if self.config.finetune_qformer:
            params += list(self.head.parameters())
        return params

    def configure_optimizers(self):
        return build_optimizer(self.trainable_parameters(), self.optim, self.trainer.estimated_stepping_batches)
