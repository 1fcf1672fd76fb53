"""CLIP as a retrieval model of the suite (Radford et al., 2021, arXiv:2103.00020).

A LightningModule over transformers' ``CLIPModel``:

* **tiny**: a small ViT image tower and text tower trained from scratch on the embedded
  benchmark with the symmetric InfoNCE loss (learnable temperature), with a word-level
  tokenizer built from the training texts;
* **full**: a pretrained checkpoint by hub id or local path (e.g.
  ``openai/clip-vit-large-patch14``), evaluated zero-shot or fine-tuned.

Under DDP the InfoNCE scores each process's rows against the features of every process,
gathered with gradient (open_clip's ``gather_with_grad`` + ``local_loss``;
:mod:`~lightning_modules.components.cross_rank`), so the negatives are the global batch.

Both sizes are saved with ``save_pretrained`` and loaded with ``from_pretrained``, so the
full-size loading path is the one the tiny checkpoints exercise. Scores are cosine
similarities of the L2-normalized projected embeddings (no temperature), which is also
what the suite reports as Sim for CLIP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import lightning as L
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

from datamodules.batch import TrainBatch
from lightning_modules.base import Encoded, blockwise_over_gallery, full_precision, max_sim
from lightning_modules.components.cross_rank import CrossRankNegatives, GlobalBatch
from lightning_modules.components.image_transform import ImageTransform
from lightning_modules.components.length_groups import encode_in_groups
from lightning_modules.components.word_tokenizer import build_word_tokenizer
from lightning_modules.cost import CostCall, CostSample, shape_key
from lightning_modules.grad_checkpointing import enable_hf
from lightning_modules.optim import OptimConfig, build_optimizer

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig

CONFIG_FILE = "suite_config.json"


@dataclass(frozen=True)
class ClipConfig:
    """CLIP options. ``pretrained`` (hub id or local path) selects the full size.

    text_group_padding: the text tower runs each batch in groups of texts of similar token
        length, each padded by at most this share over its shortest text (None: one group
        padded to the longest; the same embeddings up to float rounding, see
        :mod:`~lightning_modules.components.length_groups`).
    The remaining fields describe the tiny architecture (ignored with ``pretrained``).
    """

    pretrained: str | None = None
    image_size: int = 48
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    text_width: int = 128
    text_layers: int = 3
    heads: int = 4
    mlp_ratio: int = 2
    embed_dim: int = 128
    max_text_length: int = 48
    local_files_only: bool = True
    text_group_padding: float | None = 0.5

    def __post_init__(self) -> None:
        if self.text_group_padding is not None and self.text_group_padding < 0:
            raise ValueError("model_args.text_group_padding must be >= 0 or null")
        if self.image_size % self.patch_size:
            raise ValueError("model_args.image_size must be a multiple of model_args.patch_size")
        if self.vision_width % self.heads or self.text_width % self.heads:
            raise ValueError("model_args.vision_width and text_width must be multiples of model_args.heads")

    def hf_config(self, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> CLIPConfig:
        return CLIPConfig(
            text_config=dict(
                vocab_size=vocab_size,
                hidden_size=self.text_width,
                intermediate_size=self.mlp_ratio * self.text_width,
                num_hidden_layers=self.text_layers,
                num_attention_heads=self.heads,
                max_position_embeddings=self.max_text_length,
                pad_token_id=pad_id,
                bos_token_id=bos_id,
                eos_token_id=eos_id,
            ),
            vision_config=dict(
                image_size=self.image_size,
                patch_size=self.patch_size,
                hidden_size=self.vision_width,
                intermediate_size=self.mlp_ratio * self.vision_width,
                num_hidden_layers=self.vision_layers,
                num_attention_heads=self.heads,
            ),
            projection_dim=self.embed_dim,
        )


def _pooled(out) -> torch.Tensor:
    """The embedding of ``get_image_features`` / ``get_text_features``: a tensor in older
    transformers, a model output with ``pooler_output`` in newer ones."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _gathered_infonce(
    img: torch.Tensor, txt: torch.Tensor, index: torch.Tensor, scale: torch.Tensor, everyone: GlobalBatch
) -> torch.Tensor:
    """The symmetric InfoNCE of this process's images and texts against every process's (gathered
    with gradient): the mean over the local rows of each direction."""
    every = everyone.rows(index, grad=False)
    same = (index[:, None] == every[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (
        F.cross_entropy(scale * img @ everyone.rows(txt).T, target)
        + F.cross_entropy(scale * txt @ everyone.rows(img).T, target)
    )


class ClipRetrieval(CrossRankNegatives, L.LightningModule):
    """CLIP dual encoder honouring :class:`lightning_modules.base.RetrievalModel`."""

    Config = ClipConfig
    checkpoint_dependencies: ClassVar[dict[str, str]] = {}  # trained from scratch (tiny) or loaded (full)

    def __init__(
        self,
        model: CLIPModel,
        tokenizer,
        transform: ImageTransform,
        config: ClipConfig,
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.transform = transform
        self.config = config
        self.optim = optim or OptimConfig()

    # -- construction ------------------------------------------------------------------
    @classmethod
    def create(cls, config: ClipConfig, optim: OptimConfig, vocab_texts: Sequence[str] = ()) -> ClipRetrieval:
        """A new model: the pretrained checkpoint (full) or a random tiny one (tiny)."""
        if config.pretrained:
            return cls._from_dir(config.pretrained, config, optim)
        if not vocab_texts:
            raise ValueError("a tiny CLIP needs the training texts to build its vocabulary")
        tok = build_word_tokenizer(vocab_texts, config.max_text_length)
        hf = config.hf_config(len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
        model = CLIPModel(hf)
        model.logit_scale.data.fill_(math.log(1 / 0.07))
        return cls(model, tok, ImageTransform(config.image_size, config.image_size), config, optim)

    @classmethod
    def _from_dir(cls, path: str, config: ClipConfig, optim: OptimConfig | None) -> ClipRetrieval:
        kw: dict[str, Any] = {"local_files_only": config.local_files_only}
        model = CLIPModel.from_pretrained(path, **kw)
        tok = AutoTokenizer.from_pretrained(path, **kw)
        try:
            transform = ImageTransform.from_hf_processor(CLIPImageProcessor.from_pretrained(path, **kw))
        except OSError:  # checkpoints saved by the suite carry no processor file
            vision_config = cast("CLIPVisionConfig", model.config.vision_config)  # CLIPConfig builds it
            size = cast(int, vision_config.image_size)  # CLIP's: one int (the field admits pairs)
            transform = ImageTransform(size, size)
        return cls(model, tok, transform, config, optim)

    def save_checkpoint(self, directory: Path) -> None:
        directory = Path(directory)
        self.model.save_pretrained(directory)  # safetensors
        self.tokenizer.save_pretrained(directory)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load_checkpoint(cls, directory: Path) -> ClipRetrieval:
        config = ClipConfig(**json.loads((Path(directory) / CONFIG_FILE).read_text()))
        return cls._from_dir(str(directory), config, None)

    def enable_grad_checkpointing(self) -> None:
        """``train.grad_checkpointing``: both towers' layers recompute their activations in the backward pass."""
        enable_hf(self.model)

    # -- retrieval protocol ------------------------------------------------------------
    def image_transform(self) -> ImageTransform:
        return self.transform

    def encode_images(self, pixel_values: torch.Tensor) -> Encoded:
        emb = _pooled(self.model.get_image_features(pixel_values=pixel_values.to(self.device)))
        return Encoded(F.normalize(emb, dim=-1))

    def encode_texts(self, texts: Sequence[str]) -> Encoded:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)

        def features(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return _pooled(self.model.get_text_features(input_ids=ids, attention_mask=mask))

        emb = encode_in_groups(features, batch["input_ids"], batch["attention_mask"], self.config.text_group_padding)
        return Encoded(F.normalize(emb, dim=-1))

    def score(self, queries: Encoded, gallery: Encoded) -> torch.Tensor:
        """Cosine similarity, in float32 on the model's device, the gallery moved there block by block."""
        with full_precision(self.device):
            return blockwise_over_gallery(max_sim, queries, gallery, self.device)

    # -- training ----------------------------------------------------------------------
    def _loss(self, batch: TrainBatch) -> torch.Tensor:
        index, pixels, texts = batch.index, batch.items, batch.texts
        img = self.encode_images(pixels).emb
        txt = self.encode_texts(texts).emb
        scale = self.model.logit_scale.exp().clamp(max=100)
        everyone = self.global_batch(len(index))
        if everyone is not None:  # DDP: local rows against every process's items (cross_rank, open_clip local_loss)
            return everyone.loss_scale * _gathered_infonce(img, txt, index.to(img.device), scale, everyone)
        logits = scale * img @ txt.T
        # Items of a batch drawn from the same image are positives of each other.
        same = (index[:, None] == index[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/temperature", 1 / self.model.logit_scale.exp(), batch_size=len(batch))
        return loss

    def validation_step(self, batch: TrainBatch, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), prog_bar=True, batch_size=len(batch), sync_dist=True)

    def configure_optimizers(self):
        return build_optimizer(self.parameters(), self.optim, self.trainer.estimated_stepping_batches)

    # -- cost (lightning_modules/cost.py) ----------------------------------------------
    def cost_components(self, sample: CostSample) -> dict[str, list[CostCall]]:
        """``vision``: image tower + projection per image; ``text``: text tower + projection
        per instruction (tokenized alone, no padding)."""
        px = sample.pixels.to(self.device)
        vision = [
            CostCall(
                lambda x: self.model.get_image_features(pixel_values=x), (px[i : i + 1],), key=shape_key(px[i : i + 1])
            )
            for i in range(len(px))
        ]
        text = []
        for t in sample.texts:
            b = self.tokenizer([t], truncation=True, return_tensors="pt").to(self.device)
            ids, mask = b["input_ids"], b["attention_mask"]
            text.append(
                CostCall(
                    lambda i, m: self.model.get_text_features(input_ids=i, attention_mask=m),
                    (ids, mask),
                    key=shape_key(ids),
                )
            )
        return {"vision": vision, "text": text}
