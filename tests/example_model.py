"""The smallest model the suite runs: a mean-pooled dual encoder (the "add a model" example).

Images: the pixels cut into ``patch`` x ``patch`` patches, each linearly embedded, averaged,
normalised. Texts: the words' embeddings (a vocabulary built from the training texts, unknown
words share one row), averaged, projected, normalised. Score: the dot product. Trained with a
symmetric InfoNCE in which items of the same image are positives of each other.

It implements :class:`lightning_modules.contract.SuiteModel` and nothing optional, so it shows
what a new model must provide; ``tests/test_example_model.py`` registers it under the name
``example`` and runs it through ``bench run``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from datamodules.batch import TrainBatch
from lightning_modules.base import Encoded, blockwise_over_gallery, full_precision, max_sim
from lightning_modules.components.image_transform import ImageTransform
from lightning_modules.optim import OptimConfig, build_optimizer

CONFIG_FILE = "example_config.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "weights.safetensors"


@dataclass(frozen=True)
class ExampleConfig:
    """image_size: pixels per side of the transformed image; patch: pixels per patch side (divides
    ``image_size``); embed_dim: width of both encoders' output."""

    image_size: int = 32
    patch: int = 8
    embed_dim: int = 32

    def __post_init__(self) -> None:
        for name in ("image_size", "patch", "embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 4096:
                raise ValueError(f"model_args.{name} must be an integer in [1, 4096], got {value!r}")
        if self.image_size % self.patch:
            raise ValueError(f"model_args.patch={self.patch} must divide model_args.image_size={self.image_size}")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class MeanPoolRetrieval(L.LightningModule):
    """A registered model: the :class:`~lightning_modules.contract.SuiteModel` members, no capability."""

    Config = ExampleConfig
    checkpoint_dependencies: ClassVar[dict[str, str]] = {}

    def __init__(self, config: ExampleConfig, vocab: Sequence[str], optim: OptimConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.optim = optim or OptimConfig()
        self.vocab = {w: i + 1 for i, w in enumerate(vocab)}  # row 0: unknown words
        self.patch_embed = nn.Linear(3 * config.patch * config.patch, config.embed_dim)
        self.word_embed = nn.Embedding(len(self.vocab) + 1, config.embed_dim)
        self.text_proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    # -- life cycle --------------------------------------------------------------------
    @classmethod
    def create(cls, config: ExampleConfig, optim: OptimConfig, vocab_texts: Sequence[str] = ()) -> MeanPoolRetrieval:
        vocab = sorted({w for t in vocab_texts for w in words(t)})
        return cls(config, vocab, optim)

    def save_checkpoint(self, directory: Path) -> None:
        directory = Path(directory)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        (directory / VOCAB_FILE).write_text(json.dumps(sorted(self.vocab, key=self.vocab.__getitem__)))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS_FILE)

    @classmethod
    def load_checkpoint(cls, directory: Path) -> MeanPoolRetrieval:
        directory = Path(directory)
        config = ExampleConfig(**json.loads((directory / CONFIG_FILE).read_text()))
        model = cls(config, json.loads((directory / VOCAB_FILE).read_text()))
        model.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True)
        return model

    # -- retrieval ---------------------------------------------------------------------
    def image_transform(self) -> ImageTransform:
        return ImageTransform(self.config.image_size, self.config.image_size)

    def encode_images(self, pixel_values: torch.Tensor) -> Encoded:
        p = self.config.patch
        x = pixel_values.to(self.device)
        patches = x.unfold(2, p, p).unfold(3, p, p)  # [B, 3, H/p, W/p, p, p]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], -1, 3 * p * p)
        return Encoded(F.normalize(self.patch_embed(patches).mean(1), dim=-1))

    def encode_texts(self, texts: Sequence[str]) -> Encoded:
        rows = [[self.vocab.get(w, 0) for w in words(t)] or [0] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows], device=self.device)
        pooled = (self.word_embed(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return Encoded(F.normalize(self.text_proj(pooled), dim=-1))

    def score(self, queries: Encoded, gallery: Encoded) -> torch.Tensor:
        with full_precision(self.device):
            return blockwise_over_gallery(max_sim, queries, gallery, self.device)

    # -- training ----------------------------------------------------------------------
    def _loss(self, batch: TrainBatch) -> torch.Tensor:
        img = self.encode_images(batch.items).emb
        txt = self.encode_texts(batch.texts).emb
        logits = self.logit_scale.exp().clamp(max=100) * img @ txt.T
        index = batch.index.to(self.device)
        same = (index[:, None] == index[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, batch_size=len(batch))
        return loss

    def validation_step(self, batch: TrainBatch, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), batch_size=len(batch), sync_dist=True)

    def configure_optimizers(self):
        return build_optimizer(self.parameters(), self.optim, self.trainer.estimated_stepping_batches)
