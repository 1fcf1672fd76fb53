"""BLIP-2 as a retrieval model of the suite (Li et al., 2023, arXiv:2301.12597).

A LightningModule over transformers' BLIP-2 parts: a *frozen* vision tower, a Q-Former with
a fixed number (32) of learned queries, vision and text projections, an ITM head.

* **Scoring** (LAVIS ``compute_sim_matrix``): the ITC score of (image, text) is the max over
  the 32 L2-normalised projected query outputs of the dot product with the L2-normalised
  text CLS embedding (:func:`lightning_modules.base.max_sim`). The top ``k_test`` items of
  each query are then re-scored with ITM (class-1 logit averaged over the query outputs)
  plus ITC; the others stay below them in ITC order (:mod:`~lightning_modules.components.
  rerank`). Text-to-image re-ranks the top k images of each text, image-to-text the top k
  texts of each image; image-to-image uses ITC query-vs-query late interaction only. The
  ITC-only scores are reported too, as the score variant ``itc``.
* **Training** (tiny): ITC (learnable temperature, init 0.07, same-image items positive)
  + ITM with hard negatives sampled from the softmax of the ITC logits (similarity / temperature)
  (:mod:`~lightning_modules.components.blip2_losses`). Under DDP (LAVIS): the ITC scores
  each process's rows against every process's items, gathered with gradient, and the ITM
  hard negatives are drawn from those gathered similarities, their frozen image tokens and
  token ids gathered without gradient (:mod:`~lightning_modules.components.cross_rank`;
  ``train.gather_negatives``). With ``itm_weight = 0`` the ITM head is not trained (frozen
  at ``setup("fit")``), so every trainable parameter takes part in every step.
* **Sizes**: *full* loads ``Blip2ForImageTextRetrieval`` (``Salesforce/blip2-itm-vit-g`` or a
  local path) strictly -- every checkpoint weight is used, none is missing -- with its
  tokenizer and image processor; *tiny* puts a random small Q-Former on the frozen vision
  tower of the tiny CLIP trained on the same data (``vision_checkpoint``, resolved by the
  runner), with the word-level tokenizer.
* **Feature cache**: the frozen tower's tokens are computed once per (tower, split) and read
  from disk afterwards (:mod:`~lightning_modules.components.feature_cache`); the model
  accepts either pixels ``[B, 3, H, W]`` or tokens ``[B, N, D]`` wherever it takes images.

Inputs of re-ranking travel with the embeddings: image encodings carry their vision tokens
(``extra["image_tokens"]``), text encodings their token ids and mask.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, cast

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, Blip2ForImageTextRetrieval, Blip2QFormerConfig

from datamodules.batch import TrainBatch
from lightning_modules.base import Encoded, blockwise_over_gallery, full_precision, max_sim, on_device, scoring_view
from lightning_modules.components.blip2_losses import ItcBlocks, batch_itc, itm_loss, itm_pairs_blocks
from lightning_modules.components.cross_rank import CrossRankNegatives, GlobalBatch
from lightning_modules.components.feature_cache import FeatureCache
from lightning_modules.components.image_transform import ImageTransform
from lightning_modules.components.length_groups import encode_in_groups
from lightning_modules.components.qformer_head import HeadShape, QFormerHead
from lightning_modules.components.rerank import rerank_topk
from lightning_modules.components.vision_tower import (
    Blip2VisionTower,
    ClipVisionTower,
    VisionTower,
    load_saved_tower,
    load_strict,
    save_tower,
)
from lightning_modules.components.word_tokenizer import build_word_tokenizer
from lightning_modules.cost import CostCall, CostSample, shape_key
from lightning_modules.grad_checkpointing import enable_hf
from lightning_modules.optim import OptimConfig, build_optimizer

CONFIG_FILE = "suite_config.json"
TOWER_DIR = "vision_tower"
HEAD_DIR = "qformer_head"
IMAGE_TOKENS, INPUT_IDS, ATTENTION_MASK = "image_tokens", "input_ids", "attention_mask"
#: elements of the [q, g, T, S] similarity block scored at once by the late interaction
_MAX_SIM_BUDGET = 1 << 25


@dataclass(frozen=True)
class Blip2Config:
    """BLIP2 options. ``pretrained`` (hub id or local path) selects the full size.

    vision_checkpoint: tiny: a CLIP checkpoint whose vision transformer is the frozen tower
        (None: the runner trains / finds the tiny CLIP of the same dataset and seed).
    dependency_overrides: run-config overrides of the runs that resolve dependencies, by
        field (e.g. ``{"vision_checkpoint": {"train": {"max_epochs": 1}}}``).
    k_test: items re-scored by ITM per query (None: 128 full as LAVIS on COCO, 4 tiny to fit the
        CPU budget -- ITM costs ~1-2 ms per pair here; 0 = ITC only).
    itm_batch_size: (image, text) pairs per ITM forward pass when re-ranking.
    itm_weight: weight of the ITM loss beside ITC; itc_label_smoothing: LAVIS uses 0.1.
    itm_max_anchors: ITM trains on the positives and hard negatives of the first N items of
        each (shuffled) batch only (None = all, as LAVIS; fewer bounds the CPU cost); per
        process under DDP, like ``data.batch_size`` (the negatives still come from every process).
    itm_hard_fraction: share of ITM negatives drawn from the ITC similarities (hard, 1.0 as
        BLIP-2); the rest are drawn uniformly over the non-positives.
    max_text_length: None: 48 tiny (the word tokenizer's), 35 full (LAVIS retrieval).
    cache_features: read frozen vision features from the on-disk cache when training and evaluating.
    text_group_padding: the Q-Former's text path (ITC text side), and ours' QScaler encoder, run
        each batch in groups of texts of similar token length, each padded by at most this share
        over its shortest (None: one group padded to the longest; the same features up to float
        rounding, see :mod:`~lightning_modules.components.length_groups`).
    freeze_qformer: the Q-Former layers (``head.qformer``, ``head.embeddings``) are not trained (the
        paper's "frozen Q-Former" ablation); projections, ITM head, queries and temperature are.
    qformer_init_range: std of the tiny Q-Former's normal init (``initializer_range``; BERT's and
        LAVIS' 0.02 is the init of a 768-wide model that is then pretrained). At width 128 and
        0.02 the attention logits start near 0 and stay there over the tiny training: the
        Q-Former's self- and cross-attention stay near-uniform, the queries can hardly select
        image tokens (val t2i R@5 0.34 at 0.02, 0.47 at 0.05). The default was chosen on the
        val split (docs/experiments/tiny-itm.md).
    The q-former fields describe the tiny Q-Former (ignored with ``pretrained``).
    """

    pretrained: str | None = None
    vision_checkpoint: str | None = None
    dependency_overrides: dict = field(default_factory=dict)
    num_query_tokens: int = 32
    qformer_hidden: int = 128
    qformer_layers: int = 4
    qformer_heads: int = 4
    qformer_intermediate: int = 256
    cross_attention_frequency: int = 2
    dropout: float = 0.0
    embed_dim: int = 128
    max_text_length: int | None = None
    k_test: int | None = None
    itm_batch_size: int = 256
    itm_weight: float = 1.0
    itm_max_anchors: int | None = None
    itm_hard_fraction: float = 1.0
    itc_label_smoothing: float = 0.1
    temp_init: float = 0.07
    qformer_init_range: float = 0.05
    cache_features: bool = True
    freeze_qformer: bool = False
    local_files_only: bool = True
    text_group_padding: float | None = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.qformer_init_range <= 1:
            raise ValueError("model_args.qformer_init_range must be in (0, 1]")
        if self.qformer_hidden % self.qformer_heads:
            raise ValueError("model_args.qformer_hidden must be a multiple of model_args.qformer_heads")
        if self.num_query_tokens < 1 or self.qformer_layers < 1 or self.cross_attention_frequency < 1:
            raise ValueError("model_args.num_query_tokens, qformer_layers, cross_attention_frequency must be >= 1")
        if self.k_test is not None and self.k_test < 0:
            raise ValueError("model_args.k_test must be >= 0 (0 = ITC only) or null")
        if self.itm_max_anchors is not None and self.itm_max_anchors < 1:
            raise ValueError("model_args.itm_max_anchors must be >= 1 or null")
        if not 0 <= self.itm_hard_fraction <= 1:
            raise ValueError("model_args.itm_hard_fraction must be in [0, 1]")
        if self.itm_batch_size < 1:
            raise ValueError("model_args.itm_batch_size must be >= 1")
        if not 0 <= self.itc_label_smoothing < 1 or not 0 <= self.dropout < 1:
            raise ValueError("model_args.itc_label_smoothing and dropout must be in [0, 1)")
        if not 0 < self.temp_init <= 0.5:
            raise ValueError("model_args.temp_init must be in (0, 0.5]")
        if self.text_group_padding is not None and self.text_group_padding < 0:
            raise ValueError("model_args.text_group_padding must be >= 0 or null")

    @property
    def k(self) -> int:
        return self.k_test if self.k_test is not None else (128 if self.pretrained else 4)

    @property
    def text_length(self) -> int:
        return self.max_text_length if self.max_text_length is not None else (35 if self.pretrained else 48)

    def qformer_config(self, vocab_size: int, pad_id: int, encoder_hidden_size: int) -> Blip2QFormerConfig:
        return Blip2QFormerConfig(
            vocab_size=vocab_size,
            hidden_size=self.qformer_hidden,
            num_hidden_layers=self.qformer_layers,
            num_attention_heads=self.qformer_heads,
            intermediate_size=self.qformer_intermediate,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            max_position_embeddings=self.text_length,
            pad_token_id=pad_id,
            cross_attention_frequency=self.cross_attention_frequency,
            encoder_hidden_size=encoder_hidden_size,
            use_qformer_text_input=True,
            initializer_range=self.qformer_init_range,
        )


def load_pretrained_parts(path: str, local_files_only: bool = True, temp_init: float = 0.07):
    """``(tower, head, tokenizer)`` of a ``Blip2ForImageTextRetrieval`` checkpoint, loaded strictly.

    The one loading path of the full size (hub id or local folder, as in the tests): the
    model, its tokenizer (``AutoTokenizer``) and its image processor (the tower's transform).
    """
    hf = load_strict(
        Blip2ForImageTextRetrieval, path, local_files_only=local_files_only, dtype=torch.float32
    )  # one dtype whatever the saved config says (mixed otherwise)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
    transform = ImageTransform.from_hf_processor(
        AutoImageProcessor.from_pretrained(path, local_files_only=local_files_only)
    )
    tower = Blip2VisionTower(hf.vision_model, transform, source=str(path))
    return tower, QFormerHead.from_hf_retrieval(hf, temp_init), tok


def _same_items(queries: Encoded, gallery: Encoded) -> bool:
    """The queries *are* the gallery (image -> image over the same encoded images): the same
    storage, shape and lengths, so ``max_sim`` is symmetric."""
    a, b = queries.emb, gallery.emb
    return (
        a.shape == b.shape
        and a.data_ptr() == b.data_ptr()
        and a.stride() == b.stride()
        and queries.lengths is None
        and gallery.lengths is None
    )


def _symmetric_max_sim(items: Encoded, step: int) -> torch.Tensor:
    """``max_sim(items, items)`` from the blocks on and above the diagonal only (half the
    products); the block below the diagonal is the transpose of the one above."""
    n = len(items)
    out = items.emb.new_empty(n, n)
    for s in range(0, n, step):
        e = min(s + step, n)
        block = max_sim(items[s:e], items[s:])  # rows s:e, columns s:n
        out[s:e, s:] = block
        out[e:, s:e] = block[:, e - s :].T
    return out


class Blip2Retrieval(CrossRankNegatives, L.LightningModule):
    """BLIP-2 (frozen tower + Q-Former, ITC + ITM re-ranking) honouring the RetrievalModel protocol."""

    Config = Blip2Config
    #: config fields the runner fills with the checkpoint of another registered model (tiny size)
    checkpoint_dependencies: ClassVar[dict[str, str]] = {"vision_checkpoint": "clip"}
    #: the field of ``encode_images``' extra that is the item loader's item (the cached frozen
    #: tokens): the evaluation reads it from the cache, memory-mapped, instead of gathering it
    item_extra = IMAGE_TOKENS

    def __init__(
        self,
        vision_tower: VisionTower,
        head: QFormerHead,
        tokenizer,
        config: Blip2Config,
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.head = head
        self.tokenizer = tokenizer
        self.config = config
        self.optim = optim or OptimConfig()
        if config.freeze_qformer:  # build_optimizer takes only parameters that require grad
            self.head.qformer.requires_grad_(False)
            self.head.embeddings.requires_grad_(False)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def create(cls, config: Blip2Config, optim: OptimConfig, vocab_texts: Sequence[str] = ()) -> Blip2Retrieval:
        """A new model: the pretrained checkpoint (full) or a random Q-Former on a frozen CLIP tower (tiny)."""
        if config.pretrained:
            tower, head, tok = load_pretrained_parts(config.pretrained, config.local_files_only, config.temp_init)
            return cls(tower, head, tok, config, optim)
        if not config.vision_checkpoint:
            raise ValueError(
                "a tiny BLIP2 needs model_args.vision_checkpoint (a CLIP checkpoint; the runner "
                "resolves it to the tiny CLIP of the same dataset and seed)"
            )
        if not vocab_texts:
            raise ValueError("a tiny BLIP2 needs the training texts to build its vocabulary")
        tower = ClipVisionTower.from_clip_checkpoint(config.vision_checkpoint, config.local_files_only)
        tok = build_word_tokenizer(vocab_texts, config.text_length)
        qcfg = config.qformer_config(len(tok), tok.pad_token_id, tower.hidden_size)
        head = QFormerHead.random(qcfg, HeadShape(config.num_query_tokens, config.embed_dim, config.temp_init))
        return cls(tower, head, tok, config, optim)

    def save_checkpoint(self, directory: Path) -> None:
        directory = Path(directory)
        save_tower(self.vision_tower, directory, TOWER_DIR)  # a reference to the frozen base, or a copy
        self.head.save(directory / HEAD_DIR)
        self.tokenizer.save_pretrained(directory)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load_checkpoint(cls, directory: Path) -> Blip2Retrieval:
        directory = Path(directory)
        config = Blip2Config(**json.loads((directory / CONFIG_FILE).read_text()))
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        tower = load_saved_tower(directory, TOWER_DIR, config.local_files_only)
        return cls(tower, QFormerHead.load(directory / HEAD_DIR), tok, config)

    def item_loader(self, cache_root: Path) -> FeatureCache | None:
        """The DataModule's item loader: frozen tower features from the on-disk cache."""
        return FeatureCache(self.vision_tower, cache_root) if self.config.cache_features else None

    # -- resume points (benchmark/resume.py): what was trained, not the frozen tower ----------
    def _tower_frozen(self) -> bool:
        return isinstance(self.vision_tower, torch.nn.Module) and not any(
            p.requires_grad for p in self.vision_tower.parameters()
        )

    def _tower_state_keys(self) -> set[str]:
        """Every state-dict name of the frozen tower's tensors, under any prefix: a token-reducing
        tower (``reducer.runner.vision.*``) wraps the same modules under a second name."""
        tower = cast(nn.Module, self.vision_tower)
        ids = {id(t) for t in tower.parameters()} | {id(t) for t in tower.buffers()}
        return {k for k, v in self.state_dict(keep_vars=True).items() if id(v) in ids}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """A Lightning checkpoint leaves the frozen tower out, under every name it has (3.9 GB at
        ViT-g), and records its fingerprint."""
        if self._tower_frozen():
            drop = self._tower_state_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in drop}
            checkpoint["vision_tower_fingerprint"] = self.vision_tower.fingerprint()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        recorded = checkpoint.get("vision_tower_fingerprint")
        if recorded is None:
            return
        if recorded != self.vision_tower.fingerprint():
            raise ValueError(
                "the resume checkpoint was trained on another frozen vision tower (fingerprint "
                f"{recorded[:12]}..., this model's {self.vision_tower.fingerprint()[:12]}...)"
            )
        keys = self._tower_state_keys()
        checkpoint["state_dict"].update({k: v for k, v in self.state_dict().items() if k in keys})

    def enable_grad_checkpointing(self) -> None:
        """``train.grad_checkpointing``: the Q-Former's layers recompute their activations in the backward
        pass (every pass of the family goes through ``head.qformer``: BLIP-2's, ours' nested query
        passes, the text and ITM paths). The vision tower is frozen and runs without gradients."""
        enable_hf(self.head.qformer)

    # -- building blocks ---------------------------------------------------------------
    def vision_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen tower tokens ``[B, N, D]`` of pixels ``[B, 3, H, W]`` (or tokens passed through)."""
        if images.ndim == 3:  # cached tokens (possibly stored in half precision)
            return images.to(device=self.device, dtype=self.head.query_tokens.dtype)
        with torch.no_grad():
            return self.vision_tower(images.to(self.device))

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask ``[B, T]``, padded to the longest text (at most ``text_length``)."""
        b = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.text_length, return_tensors="pt"
        )
        return b["input_ids"].to(self.device), b["attention_mask"].to(self.device)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``head.text_feat`` ``[B, E]``, run in groups of similar length (``text_group_padding``)."""
        return encode_in_groups(self.head.text_feat, input_ids, attention_mask, self.config.text_group_padding)

    def itm_scores(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class-1 ITM logit (averaged over query outputs) of row-paired images and texts.

        ``lengths`` (the texts' query lengths) is for subclasses with a per-text number of
        queries; BLIP-2's fixed queries ignore it."""
        n = int(attention_mask.sum(1).max())  # trailing padding is masked: drop it
        return self.head.itm_logits(
            on_device(image_tokens, self.device),
            input_ids[:, :n].to(self.device),
            attention_mask[:, :n].to(self.device),
        )[:, 1].float()

    def vqa_queries(self, images: torch.Tensor, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """VQA prefix (``lightning_modules/vqa.py``): the 32 query outputs ``[B, 32, H]`` (BLIP-2's
        queries do not see the question) and an all-true mask ``[B, 32]``."""
        out = self.head.query_outputs(self.head.query_tokens, self.vision_tokens(images))
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)

    # -- retrieval protocol ------------------------------------------------------------
    def image_transform(self) -> ImageTransform:
        return self.vision_tower.transform

    def encode_images(self, pixel_values: torch.Tensor) -> Encoded:
        tokens = self.vision_tokens(pixel_values)
        feats = self.head.image_feats(self.head.query_outputs(self.head.query_tokens, tokens))
        return Encoded(feats, extra={IMAGE_TOKENS: tokens})

    def encode_texts(self, texts: Sequence[str]) -> Encoded:
        ids, mask = self.tokenize(texts)
        feat = self.text_features(ids, mask)
        pad = self.config.text_length - ids.shape[1]  # one width for every batch (the metric concatenates them)
        if pad > 0:
            ids = F.pad(ids, (0, pad), value=self.tokenizer.pad_token_id)
            mask = F.pad(mask, (0, pad), value=0)
        return Encoded(feat, extra={INPUT_IDS: ids, ATTENTION_MASK: mask})

    def itc_score(self, queries: Encoded, gallery: Encoded) -> torch.Tensor:
        """ITC: max over query outputs (and, image vs image, over pairs of them), in bounded blocks
        of queries and of the gallery (moved to the device block by block), in float32."""

        def block(q: Encoded, g: Encoded) -> torch.Tensor:
            vectors = (q.emb.shape[1] if q.emb.ndim == 3 else 1) * (g.emb.shape[1] if g.emb.ndim == 3 else 1)
            step = max(1, _MAX_SIM_BUDGET // max(1, len(g) * vectors))
            if same:
                return _symmetric_max_sim(q, step)
            return torch.cat([max_sim(q[s : s + step], g) for s in range(0, len(q), step)])

        if len(queries) == 0:
            return torch.zeros(0, len(gallery), device=self.device)
        same = _same_items(queries, gallery)
        with full_precision(self.device):
            if same:
                return block(scoring_view(queries, self.device), scoring_view(gallery, self.device))
            return blockwise_over_gallery(block, queries, gallery, self.device)

    def score(self, queries: Encoded, gallery: Encoded) -> torch.Tensor:
        """ITC, with the top ``k_test`` of each row re-scored by ITM + ITC (t2i and i2t)."""
        itc = self.itc_score(queries, gallery)
        qx, gx = queries.extra or {}, gallery.extra or {}
        if self.config.k == 0:
            return itc
        if INPUT_IDS in qx and IMAGE_TOKENS in gx:  # text -> image
            images, texts, text_enc, image_side = gx, qx, queries, 1
        elif IMAGE_TOKENS in qx and INPUT_IDS in gx:  # image -> text
            images, texts, text_enc, image_side = qx, gx, gallery, 0
        else:  # image -> image: no pairwise head for it
            return itc

        def pairs(qi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
            ii, ti = (qi, gi) if image_side == 0 else (gi, qi)
            tok = images[IMAGE_TOKENS]
            ids, mask, lengths = texts[INPUT_IDS], texts[ATTENTION_MASK], text_enc.lengths
            return self.itm_scores(
                tok[ii.to(tok.device)],
                ids[ti.to(ids.device)],
                mask[ti.to(mask.device)],
                None if lengths is None else lengths[ti.to(lengths.device)],
            )

        def cost(qi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
            return self.itm_pair_cost(texts[ATTENTION_MASK], text_enc.lengths, gi if image_side == 0 else qi)

        text_ids = self.text_identity(texts[INPUT_IDS], texts[ATTENTION_MASK], text_enc.lengths)
        n_images = len(images[IMAGE_TOKENS])

        def key(qi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
            ii, ti = (qi, gi) if image_side == 0 else (gi, qi)
            return text_ids.to(ti.device)[ti] * n_images + ii

        # itc is this call's own matrix: re-ranked in place (one [Q, G] matrix, not two)
        return rerank_topk(
            itc,
            self.config.k,
            pairs,
            batch_size=self.config.itm_batch_size,
            pair_cost=cost,
            pair_key=key,
            in_place=True,
        )

    @staticmethod
    def text_identity(
        input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor | None
    ) -> torch.Tensor:
        """``[N]`` ints, equal exactly for texts whose ITM inputs are equal (ids, mask, and L
        when the model has one): re-ranking scores an (identical text, image) pair once."""
        rows = [input_ids.long(), attention_mask.long().to(input_ids.device)]
        if lengths is not None:
            rows.append(lengths.long().to(input_ids.device)[:, None])
        return torch.unique(torch.cat(rows, dim=1), dim=0, return_inverse=True)[1]

    @staticmethod
    def itm_pair_cost(
        attention_mask: torch.Tensor, lengths: torch.Tensor | None, text_index: torch.Tensor
    ) -> torch.Tensor:
        """Tokens of an ITM pass per pair (its text's tokens plus its number of queries, when it
        has its own): the sort key that batches pairs of similar length when re-ranking."""
        text_index = text_index.to(attention_mask.device)
        tokens = attention_mask.sum(1)[text_index]
        if lengths is not None:
            tokens = tokens + lengths.to(tokens.device)[text_index]
        return tokens

    #: Sim is reported on the first-stage ITC score (the re-rank score is not a similarity)
    similarity_variant = "itc"

    #: ``score`` re-ranks text <-> image only: image -> image *is* the ITC, so it is not rescored
    score_variant_directions: ClassVar[dict[str, tuple[str, ...]]] = {"itc": ("t2i", "i2t")}
    #: ... and so reads the vision tokens and text ids (``Encoded.extra``) in those directions only
    extra_directions: ClassVar[tuple[str, ...]] = ("t2i", "i2t")

    def score_variants(self) -> dict:
        """The ITC-only scores, reported beside the re-ranked ones as ``itc/...``."""
        return {"itc": self.itc_score}

    # -- training ----------------------------------------------------------------------
    def _losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        index, images, texts = batch.index, batch.items, batch.texts
        index = index.to(self.device)
        tokens = self.vision_tokens(images)
        img = self.head.image_feats(self.head.query_outputs(self.head.query_tokens, tokens))
        ids, mask = self.tokenize(texts)
        txt = self.text_features(ids, mask)
        with torch.no_grad():
            self.head.temp.clamp_(0.001, 0.5)
        everyone = self.global_batch(len(index))  # DDP: negatives from every process (cross_rank)
        loss_itc, blocks = batch_itc(img, txt, index, self.head.temp, self.config.itc_label_smoothing, everyone)
        out = {"itc": loss_itc}
        if self.config.itm_weight > 0:
            img_i, txt_i, labels = self.itm_training_pairs(blocks)
            logits = self.head.itm_logits(*self.itm_inputs(everyone, img_i, txt_i, tokens, ids, mask))
            out["itm"] = itm_loss(logits, labels)
        out["loss"] = loss_itc + self.config.itm_weight * out.get("itm", 0.0)
        return out

    def itm_training_pairs(self, blocks: ItcBlocks):
        """The ITM batch of a training step, with the configured anchors and hard-negative share
        (:func:`~lightning_modules.components.blip2_losses.itm_pairs_blocks`: indices into the
        global batch under DDP); shared by the family. Negatives are drawn from the softmax of the
        ITC logits, the similarities divided by the learned temperature (LAVIS
        ``blip2_qformer.py``)."""
        temp = self.head.temp.detach()
        return itm_pairs_blocks(
            blocks.sim_i2t.detach() / temp,
            blocks.sim_t2i.detach() / temp,
            blocks.positives_i2t,
            blocks.positives_t2i,
            blocks.offset,
            max_anchors=self.config.itm_max_anchors,
            hard_fraction=self.config.itm_hard_fraction,
        )

    def itm_inputs(
        self,
        everyone: GlobalBatch | None,
        img_i: torch.Tensor,
        txt_i: torch.Tensor,
        tokens: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        *per_text: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """The ITM inputs of the pairs ``(img_i, txt_i)``: image tokens, token ids, mask and each
        ``per_text`` tensor (e.g. ours' L) of the chosen rows. Under DDP (``everyone``) the indices
        are global: the frozen tokens, ids and masks of every process are gathered without
        gradient (LAVIS ``concat_all_gather``), the ids padded to the widest process's and then
        cut to the widest chosen text."""
        if everyone is None:
            return tokens[img_i], ids[txt_i], mask[txt_i], *(t[txt_i] for t in per_text)
        ids = everyone.padded_rows(ids, self.tokenizer.pad_token_id)[txt_i]
        mask = everyone.padded_rows(mask, 0)[txt_i]
        width = max(1, int(mask.sum(1).max()))
        return (
            everyone.select(tokens, img_i),
            ids[:, :width],
            mask[:, :width],
            *(everyone.rows(t, grad=False)[txt_i] for t in per_text),
        )

    def setup(self, stage: str) -> None:
        """Before fitting (and before DDP wraps the module): a part no training loss reaches is
        not trainable -- the ITM head when ``itm_weight`` is 0 -- so that every trainable
        parameter takes part in every step (plain ``ddp``, no ``find_unused_parameters``). The
        same training in one process: a parameter without a gradient was skipped by AdamW and
        by the gradient clipping before, and is left out of the optimizer now."""
        if stage == "fit" and self.config.itm_weight == 0:
            self.head.itm_head.requires_grad_(False)

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        n = len(batch)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        for k in ("itc", "itm"):
            if k in losses:
                self.log(f"train/{k}", losses[k], batch_size=n)
        self.log("train/temperature", self.head.temp.detach(), batch_size=n)
        return losses["loss"]

    def validation_step(self, batch: TrainBatch, batch_idx: int) -> None:
        self.log("val/loss", self._losses(batch)["loss"], prog_bar=True, batch_size=len(batch), sync_dist=True)

    def configure_optimizers(self):
        return build_optimizer(self.head.parameters(), self.optim, self.trainer.estimated_stepping_batches)

    # -- cost (lightning_modules/cost.py) ----------------------------------------------
    def _cost_inputs(self, sample: CostSample):
        """Per image its pixels ``[1, 3, H, W]`` and image tokens; per instruction (tokenized alone) ids and mask."""
        px = sample.pixels.to(self.device)
        pixels = [px[i : i + 1] for i in range(len(px))]
        with torch.no_grad():
            tokens = [self.vision_tokens(p) for p in pixels]
        return pixels, tokens, [self.tokenize([t]) for t in sample.texts]

    def cost_components(self, sample: CostSample) -> dict[str, list[CostCall]]:
        """``vision`` (``vision_tokens``) and ``qformer`` (``encode_images`` minus ``vision_tokens``:
        the queries over one image) per image, ``text`` (Q-Former text path) per instruction,
        ``rerank`` (one ``itm_scores`` pass) per pair. Only public seams, so a subclass that
        overrides them (e.g. token reduction) is measured as it runs."""
        pixels, tokens, texts = self._cost_inputs(sample)
        # image side: traced per image (a subclass's cost may depend on the image, e.g. token pruning)
        vision = [CostCall(self.vision_tokens, (p,)) for p in pixels]
        qformer = [CostCall(lambda x: self.encode_images(x).emb, (p,), minus=v) for p, v in zip(pixels, vision)]
        pairs = [(tokens[i % len(tokens)], ids, mask) for i, (ids, mask) in enumerate(texts)]
        rerank = [CostCall(self.itm_scores, (tok, ids, mask), key=shape_key(tok, ids)) for tok, ids, mask in pairs]
        return {
            "vision": vision,
            "qformer": qformer,
            "rerank": rerank,
            "text": [CostCall(self.head.text_feat, (ids, mask), key=shape_key(ids)) for ids, mask in texts],
        }
