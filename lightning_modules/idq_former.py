"""BLIP2-IDQ-Former (``--model ours``): BLIP-2 with instruction-dependent query length.

InstructSee (Gu et al., Sensors 2025, 25(16), 5195), Algorithm 1, for retrieval. Built on
:class:`lightning_modules.blip2.Blip2Retrieval` (same frozen vision tower, Q-Former head,
tokenizer, ITC + ITM losses, ITM re-ranking) with three additions:

* a **token bank** of ``L_max`` queries (the BLIP-2 checkpoint's 32 query tokens are its
  first rows, as stored or, with ``bank_order="usage"``, most used first) plus frozen rows of
  the Q-Former's pretrained text position table
  (:mod:`~lightning_modules.components.token_bank`);
* **QScaler**: a frozen pretrained language encoder (``qscaler_encoder``; full size: a copy of
  the checkpoint's Q-Former text encoder, tiny: the tiny CLIP's text tower) and an MLP give
  each instruction r in [0, 1] and
  ``L = L_base + round(r (L_max - L_base))`` (:mod:`~lightning_modules.components.qscaler`);
* **nested query attention** in the Q-Former self-attention (query i sees queries <= i), so
  the gallery is encoded once with ``L_max`` queries and a text of length L is scored
  against exactly the outputs of an L-query pass
  (:mod:`~lightning_modules.components.query_attention`).

Scoring (the RetrievalModel protocol): text encodings carry ``lengths`` = L;
ITC ``s(t, image) = max_{i < L_t} <t, z_i>`` (:func:`~lightning_modules.components.
dynamic_length.length_limited_max_sim`); the top ``k_test`` are re-scored with ITM + ITC as
in BLIP-2, where the ITM pass is the **instruction-conditioned** path of 3.3: the L queries
attend (nested) to each other and to the instruction tokens in self-attention, so their
cross-attention to the image depends on the instruction; the instruction tokens see the L
queries; queries >= L are hidden (the pass runs ``max L`` queries of the batch, which is
where a short L saves compute); the ITM logit is averaged over the L query outputs.
Image-to-image uses all ``L_max`` outputs (no instruction).

Training (on the BLIP2 checkpoint, Q-Former + bank + QScaler head trainable, tower frozen):
BLIP-2's ITC, with the soft length mask of
:mod:`~lightning_modules.components.dynamic_length` (L learnable end to end), + ITM (hard
negatives, run at each text's integer L) + the length cost + the self-supervised oracle
length target; a caption's positives are the items of its own image, as in BLIP2. Under DDP
every ITC term (soft-masked and ``L_max``), the oracle's ranking (the global batch plus a
queue of global batches) and the ITM hard negatives use the batches of every process,
gathered with gradient (L and the QScaler head included;
:mod:`~lightning_modules.components.cross_rank`), and in the ``qscaler_warmup`` the QScaler
head takes part in the graph with an exactly zero gradient that is dropped before the
optimizer step, so plain ``ddp`` trains ours and one process trains as it does.
``qscaler: false`` gives the paper's "without QScaler" ablation (every text
L = ``l_init``, 32, and the gallery is encoded with ``l_init`` queries); ``attention:
"full"`` keeps BLIP-2's full query self-attention, for comparison: then all ``L_max``
queries always run and see each other (gallery and ITM pass alike) and L only selects the
outputs that are scored (ITC max, ITM average), so a text's first L outputs are *not* those
of an L-query pass and a short L saves nothing.

Sizes: *full* loads a ``Blip2ForImageTextRetrieval`` checkpoint (``pretrained``); *tiny*
starts from the tiny BLIP2 checkpoint trained on the same data (``blip2_checkpoint``,
resolved and trained if needed by the runner).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, cast

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from datamodules.batch import TrainBatch
from lightning_modules.base import Encoded, blockwise_over_gallery, full_precision, on_device
from lightning_modules.blip2 import (
    CONFIG_FILE,
    HEAD_DIR,
    IMAGE_TOKENS,
    TOWER_DIR,
    Blip2Config,
    Blip2Retrieval,
    load_pretrained_parts,
)
from lightning_modules.components.blip2_losses import ItcBlocks, itc_loss, itc_loss_blocks, itc_similarities, itm_loss
from lightning_modules.components.dynamic_length import (
    GlobalColumns,
    LengthConfig,
    dynamic_itc,
    length_limited_max_sim,
    per_query_sims,
    scale_grad,
)
from lightning_modules.components.qformer_head import QFormerHead
from lightning_modules.components.qscaler import POOLS, HFTextEncoder, Pool, QFormerTextEncoder, QScaler
from lightning_modules.components.query_attention import ATTENTION_MODES, AttentionMode, qformer_query_forward
from lightning_modules.components.token_bank import TokenBank
from lightning_modules.components.vision_tower import load_saved_tower
from lightning_modules.cost import CostCall, shape_key
from lightning_modules.optim import OptimConfig, build_optimizer

IDQ_WEIGHTS = "idq.safetensors"
#: a checkpoint's copy of the QScaler's frozen transformers encoder folder (not "qformer")
QSCALER_ENCODER_DIR = "qscaler_encoder"
#: the order of the checkpoint's query tokens in the token bank (``IdqConfig.bank_order``)
BANK_ORDERS = ("checkpoint", "usage")
#: a trained checkpoint's record of the usage order (``bank_order="usage"``)
BANK_USAGE_FILE = "bank_usage.json"
#: elements of the [q, chunk, L_max] similarity block scored at once by the ITC
_MAX_SIM_BUDGET = 1 << 25


def _encoder_source(config: IdqConfig, vision_checkpoint: str | None = None) -> Path | None:
    """The folder of the QScaler's frozen transformers encoder: None for "qformer"; for "clip"
    ``clip_checkpoint``, else ``vision_checkpoint`` (the CLIP the BLIP2 checkpoint's tower comes from)."""
    kind = config.encoder_kind
    if not config.qscaler or kind == "qformer":
        return None
    if kind != "clip":
        return Path(config.qscaler_encoder)
    source = config.clip_checkpoint or vision_checkpoint
    if not source:
        raise ValueError(
            "model_args.qscaler_encoder='clip' (the tiny default) reads the text tower of the CLIP "
            "checkpoint the BLIP2 checkpoint's vision tower comes from, but neither "
            "model_args.clip_checkpoint nor the BLIP2 checkpoint's vision_checkpoint names one; "
            "set one of them, or model_args.qscaler_encoder='qformer'"
        )
    if not Path(source).is_dir():
        raise ValueError(
            f"model_args.qscaler_encoder='clip': CLIP checkpoint {source} (the QScaler's frozen text "
            f"encoder) is not a folder; set model_args.clip_checkpoint"
        )
    return Path(source)


@dataclass(frozen=True)
class IdqConfig(Blip2Config):
    """BLIP2-IDQ-Former options: BLIP2's (its tiny-architecture fields are unused: the Q-Former
    comes from ``blip2_checkpoint`` or ``pretrained``) plus:

    blip2_checkpoint: tiny: the BLIP2 suite checkpoint to start from (None: the runner trains
        / finds the tiny BLIP2 of the same dataset and seed).
    l_base, l_max, l_init, noise_std, mask_tau, length_weight, oracle_weight, lmax_itc_weight:
        see :class:`~lightning_modules.components.dynamic_length.LengthConfig`.
    attention: "nested" (query i attends to queries <= i) or "full" (BLIP-2).
    qscaler: False = the "without QScaler" ablation: every text gets ``l_init`` queries.
    qscaler_encoder: the QScaler's frozen language encoder: "qformer" (a frozen copy of the
        checkpoint's Q-Former text encoder), "clip" (tiny only: the text tower of the tiny CLIP
        checkpoint ``clip_checkpoint``), a local transformers checkpoint (e.g. all-MiniLM-L6-v2),
        or "auto" (default): "qformer" at full size (``pretrained``), "clip" at tiny size.
    clip_checkpoint: tiny, with ``qscaler_encoder`` "clip": the CLIP suite checkpoint whose text
        tower the QScaler reads (None: the one the BLIP2 checkpoint's vision tower comes from,
        its ``vision_checkpoint``).
    qscaler_hidden: width of the QScaler MLP.
    qscaler_layers: with ``qscaler_encoder="qformer"``, the QScaler reads the [CLS] of the frozen
        text path after its first N layers (None: all of them). Fewer layers: a cheaper QScaler
        on the instruction path (it runs once per instruction before the Q-Former).
    qscaler_pool: how the QScaler pools its frozen encoder's token features: "cls" (first
        token), "mean" (over the instruction's tokens) or "pooler" (the model's pooler output,
        e.g. CLIP's EOS); None: the encoder's own default ("cls" for "qformer", "pooler" for
        a CLIP folder, "mean" otherwise).
    extra_init, init_std, learn_positions, use_positions: see
        :class:`~lightning_modules.components.token_bank.TokenBank`.
    bank_order: the order of the checkpoint's query tokens in the bank: "checkpoint" (rows
        0..31 as stored) or "usage" (default): at the first training step, before any update, the
        checkpoint's queries are sorted by how many of the batch's (caption, image) ITC maxima
        each wins in BLIP-2's own pass (full attention, no positions; summed over DDP ranks),
        most used first. BLIP-2 attends over its queries without order, so this is the same
        BLIP-2; with nested attention it puts the queries BLIP-2's ITC relies on into every
        prefix. Recorded in the checkpoint (``bank_usage.json``).
    text_sees_queries: in the instruction-conditioned (ITM) pass, instruction tokens attend
        to the queries (InstructBLIP style) -- or only to themselves.
    itm_conditioning: evaluation only (:attr:`IdqFormerRetrieval.eval_only_fields`: the same
        checkpoint serves both values). True (default): the ITM pass is the
        instruction-conditioned one of 3.3 (:meth:`IdqFormerRetrieval.instructed_query_outputs`).
        False: BLIP-2's plain ITM pass (``QFormerHead.itm_logits``, as ``--model blip2`` runs
        it) over the same trained weights: a fixed query set for every text -- the bank's first
        ``l_init`` queries (the rows the checkpoint's 32 queries initialised), not the
        instruction's first L -- in BLIP-2's full self-attention with the text tokens, the
        logit averaged over all of them; ITC and the gallery are unchanged.
    oracle_queue: images of recent batches (detached query outputs) kept as extra negatives
        when the oracle lengths are ranked (0: in-batch only; see ``dynamic_itc``).
    qscaler_lr_scale: the QScaler head's learning rate as a multiple of ``train.optim.lr``.
    qscaler_memo: in training, keep the QScaler's frozen features of up to this many distinct
        instructions in memory (later epochs skip its encoder; 0: encode every batch).
    qscaler_warmup: share of the training steps during which the QScaler head does not learn
        (every text keeps ``l_init``, r is detached): the nested-attention Q-Former first learns
        to use all its queries, then the lengths are fitted to what the queries can do. Without
        it the lengths collapse to ``l_base`` in the first few dozen steps, while the queries
        beyond ``l_base`` are still untrained for nested attention.
    """

    blip2_checkpoint: str | None = None
    clip_checkpoint: str | None = None
    l_base: int = 2
    l_max: int = 48
    l_init: int = 32
    noise_std: float = 0.05
    mask_tau: float = 1.0
    length_weight: float = 0.1
    oracle_weight: float = 0.5
    lmax_itc_weight: float = 0.5
    attention: str = "nested"
    qscaler: bool = True
    qscaler_encoder: str = "auto"
    qscaler_hidden: int = 256
    qscaler_layers: int | None = None
    qscaler_pool: str | None = None
    extra_init: str = "copy_noise"
    init_std: float = 0.02
    learn_positions: bool = False
    use_positions: bool = True
    text_sees_queries: bool = True
    oracle_queue: int = 1024
    qscaler_lr_scale: float = 1.0
    qscaler_warmup: float = 0.25
    qscaler_memo: int = 100_000
    bank_order: str = "usage"
    itm_conditioning: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"model_args.attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.extra_init not in ("copy_noise", "normal"):
            raise ValueError("model_args.extra_init must be 'copy_noise' or 'normal'")
        if self.qscaler_hidden < 1:
            raise ValueError("model_args.qscaler_hidden must be >= 1")
        if self.qscaler_encoder == "clip" and self.pretrained:
            raise ValueError(
                "model_args.qscaler_encoder='clip' is the tiny CLIP's text tower (tiny size only); at "
                "full size use 'qformer' or a local checkpoint folder"
            )
        if self.qscaler_layers is not None and (self.qscaler_layers < 1 or self.encoder_kind != "qformer"):
            raise ValueError(
                "model_args.qscaler_layers must be >= 1 and needs qscaler_encoder='qformer' "
                f"(here {self.encoder_kind!r})"
            )
        if self.qscaler_pool not in (None, *POOLS) or (
            self.qscaler_pool == "pooler" and self.encoder_kind == "qformer"
        ):
            raise ValueError(
                f"model_args.qscaler_pool must be null or one of {POOLS} ('pooler' only with another "
                f"qscaler_encoder than 'qformer'), got {self.qscaler_pool!r}"
            )
        if self.qscaler_memo < 0:
            raise ValueError("model_args.qscaler_memo must be >= 0")
        if self.qscaler_lr_scale <= 0:
            raise ValueError("model_args.qscaler_lr_scale must be > 0")
        if not 0 <= self.qscaler_warmup < 1:
            raise ValueError("model_args.qscaler_warmup must be in [0, 1)")
        if self.oracle_queue < 0:
            raise ValueError("model_args.oracle_queue must be >= 0")
        if self.bank_order not in BANK_ORDERS:
            raise ValueError(f"model_args.bank_order must be one of {BANK_ORDERS}, got {self.bank_order!r}")
        self.length_config()  # validates the length fields

    @property
    def encoder_kind(self) -> str:
        """``qscaler_encoder`` with "auto" resolved: "qformer" at full size, "clip" at tiny size."""
        if self.qscaler_encoder == "auto":
            return "qformer" if self.pretrained else "clip"
        return self.qscaler_encoder

    @property
    def attention_mode(self) -> AttentionMode:
        """``attention`` as the query pass's mode (checked against ATTENTION_MODES on construction)."""
        return cast(AttentionMode, self.attention)

    def length_config(self) -> LengthConfig:
        return LengthConfig(
            self.l_base,
            self.l_max,
            self.l_init,
            self.noise_std,
            self.mask_tau,
            self.length_weight,
            self.oracle_weight,
            self.lmax_itc_weight,
        )


class IdqFormerRetrieval(Blip2Retrieval):
    """BLIP2-IDQ-Former honouring the RetrievalModel protocol (see the module docstring)."""

    Config = IdqConfig
    #: config fields the runner fills with the checkpoint of another registered model (tiny size)
    checkpoint_dependencies: ClassVar[dict[str, str]] = {"blip2_checkpoint": "blip2"}
    #: config fields that change only the evaluation: left out of the checkpoint key, and the
    #: run's value replaces the one stored with a loaded checkpoint (benchmark/store.py)
    eval_only_fields: ClassVar[tuple[str, ...]] = ("itm_conditioning",)
    config: IdqConfig

    def __init__(
        self,
        vision_tower,
        head: QFormerHead,
        tokenizer,
        config: IdqConfig,
        bank: TokenBank,
        qscaler: QScaler | None,
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__(vision_tower, head, tokenizer, config, optim)
        self.bank = bank
        self.qscaler = qscaler
        self.length = config.length_config()
        self.head.query_tokens.requires_grad_(False)  # superseded by the token bank
        self._queue: tuple[torch.Tensor, torch.Tensor] | None = None  # (image index, query outputs), oracle only
        self._encoder_dir: Path | None = None  # the QScaler's transformers encoder folder (set by _assemble)
        #: bank_order="usage": the order is set at the first training step (never for a loaded checkpoint)
        self._order_pending = config.bank_order == "usage" and bank.num_pretrained > 0
        self.bank_usage: dict | None = None  # what that step measured

    # -- construction ------------------------------------------------------------------
    @classmethod
    def create(cls, config: Blip2Config, optim: OptimConfig, vocab_texts: Sequence[str] = ()) -> IdqFormerRetrieval:
        """From a pretrained BLIP-2 checkpoint (full) or the tiny BLIP2 suite checkpoint (tiny)."""
        if not isinstance(config, IdqConfig):  # the signature is Blip2Retrieval.create's; ours needs its own config
            raise TypeError(f"IdqFormerRetrieval.create needs an IdqConfig, got {type(config).__name__}")
        if config.pretrained:
            tower, head, tok = load_pretrained_parts(config.pretrained, config.local_files_only, config.temp_init)
        else:
            if not config.blip2_checkpoint:
                raise ValueError(
                    "a tiny IDQ-Former needs model_args.blip2_checkpoint (a BLIP2 checkpoint; the "
                    "runner resolves it to the tiny BLIP2 of the same dataset and seed)"
                )
            base = Blip2Retrieval.load_checkpoint(Path(config.blip2_checkpoint))
            tower, head, tok = base.vision_tower, base.head, base.tokenizer
            encoder_dir = _encoder_source(config, base.config.vision_checkpoint)
            return cls._assemble(tower, head, tok, config, optim, encoder_dir)
        return cls._assemble(tower, head, tok, config, optim, _encoder_source(config))

    @classmethod
    def _assemble(
        cls,
        tower,
        head: QFormerHead,
        tok,
        config: IdqConfig,
        optim: OptimConfig | None,
        encoder_dir: Path | None = None,
    ):
        """The model around its BLIP-2 parts; ``encoder_dir``: the folder of the QScaler's frozen
        transformers encoder (:func:`_encoder_source`, or a saved checkpoint's copy of it)."""
        if config.use_positions and head.embeddings.position_embeddings.num_embeddings < config.l_max:
            raise ValueError(
                f"model_args.l_max={config.l_max} exceeds the Q-Former's "
                f"{head.embeddings.position_embeddings.num_embeddings} pretrained positions"
            )
        bank = TokenBank.from_blip2(
            head.query_tokens,
            head.embeddings,
            config.l_max,
            extra_init=config.extra_init,
            init_std=config.init_std,
            learn_positions=config.learn_positions,
            use_positions=config.use_positions,
        )
        qscaler = None
        if config.qscaler:
            encoder: QFormerTextEncoder | HFTextEncoder
            if config.encoder_kind == "qformer":
                encoder = QFormerTextEncoder(
                    head.embeddings,
                    head.qformer,
                    tok,
                    max_length=config.text_length,
                    layers=config.qscaler_layers,
                    pool=cast(Pool, config.qscaler_pool or "cls"),  # IdqConfig checks it is one of POOLS
                )
            else:
                if encoder_dir is None:
                    raise ValueError(f"the QScaler encoder {config.encoder_kind!r} needs its folder")
                encoder = HFTextEncoder.from_pretrained(
                    str(encoder_dir),
                    pool=cast("Pool | None", config.qscaler_pool),
                    local_files_only=config.local_files_only,
                )
            qscaler = QScaler(
                encoder,
                config.length_config(),
                config.qscaler_hidden,
                memo=config.qscaler_memo,
                group_padding=config.text_group_padding,
            )
        model = cls(tower, head, tok, config, bank, qscaler, optim)
        model._encoder_dir = encoder_dir  # None unless a transformers encoder was loaded from it
        return model

    def save_checkpoint(self, directory: Path) -> None:
        super().save_checkpoint(directory)  # tower, head, tokenizer, config
        if self._encoder_dir is not None:
            # the frozen encoder's own folder travels with the checkpoint, so it loads without
            # the cache (or download) it came from; its weights are in IDQ_WEIGHTS too
            target = Path(directory) / QSCALER_ENCODER_DIR
            if Path(self._encoder_dir).resolve() != target.resolve():
                shutil.copytree(self._encoder_dir, target, dirs_exist_ok=True)
        if self.bank_usage is not None:
            (Path(directory) / BANK_USAGE_FILE).write_text(json.dumps(self.bank_usage, indent=1))
        state = {f"bank.{k}": v for k, v in self.bank.state_dict().items()}
        if self.qscaler is not None:
            state |= {f"qscaler.{k}": v for k, v in self.qscaler.state_dict().items()}
        save_file({k: v.detach().contiguous() for k, v in state.items()}, Path(directory) / IDQ_WEIGHTS)

    @classmethod
    def load_checkpoint(cls, directory: Path) -> IdqFormerRetrieval:
        directory = Path(directory)
        config = IdqConfig(**json.loads((directory / CONFIG_FILE).read_text()))
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        encoder_dir = directory / QSCALER_ENCODER_DIR
        model = cls._assemble(
            load_saved_tower(directory, TOWER_DIR, config.local_files_only),
            QFormerHead.load(directory / HEAD_DIR),
            tok,
            config,
            None,
            encoder_dir if encoder_dir.is_dir() else _encoder_source(config),
        )
        state = load_file(directory / IDQ_WEIGHTS)
        model.bank.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("bank.")}, strict=True)
        model._order_pending = False  # a trained bank keeps its order
        if (directory / BANK_USAGE_FILE).is_file():
            model.bank_usage = json.loads((directory / BANK_USAGE_FILE).read_text())
        if model.qscaler is not None:
            model.qscaler.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("qscaler.")}, strict=True)
        return model

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["idq_state"] = {"order_pending": self._order_pending, "bank_usage": self.bank_usage}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed training keeps the bank order its first step set (and what that step measured)."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("idq_state") or {}
        self._order_pending = bool(state.get("order_pending", self._order_pending))
        self.bank_usage = state.get("bank_usage", self.bank_usage)

    # -- building blocks ---------------------------------------------------------------
    @property
    def gallery_length(self) -> int:
        """Queries per gallery image: ``L_max`` (``l_init`` without QScaler)."""
        return self.length.l_max if self.qscaler is not None else self.length.l_init

    def query_outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Q-Former outputs ``[B, gallery_length, H]`` of the bank's queries over vision tokens."""
        return qformer_query_forward(
            self.head.qformer,
            self.bank(self.gallery_length),
            tokens.to(self.bank.tokens.dtype),
            mode=self.config.attention_mode,
        )

    def text_lengths(self, texts: Sequence[str]) -> torch.Tensor:
        """L per instruction (QScaler in eval mode: no noise), ``[B]`` long."""
        if self.qscaler is None:
            return torch.full((len(texts),), self.length.l_init, dtype=torch.long, device=self.device)
        return self.qscaler(texts).length.to(self.device)

    def instructed_query_outputs(
        self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The instruction-conditioned pass (module docstring): query outputs ``[B, n, H]`` of
        row-paired (image, instruction) and the mask ``[B, n]`` of each row's first L."""
        lengths = lengths.to(image_tokens.device)
        nested = self.config.attention == "nested"
        n = int(lengths.max()) if nested else self.gallery_length
        text = self.head.embeddings(input_ids=input_ids)
        out = qformer_query_forward(
            self.head.qformer,
            self.bank(n),
            image_tokens.to(self.bank.tokens.dtype),
            mode=self.config.attention_mode,
            text_embeds=text,
            text_mask=attention_mask,
            lengths=lengths if nested else None,
            text_sees_queries=self.config.text_sees_queries,
        )
        return out[:, :n], torch.arange(n, device=lengths.device)[None] < lengths[:, None]

    def itm_logits(
        self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """ITM logits ``[B, 2]`` of row-paired (image, instruction) at each row's L (module docstring)."""
        out, mask = self.instructed_query_outputs(image_tokens, input_ids, attention_mask, lengths)
        return self.head.itm_average(out, mask)

    def vqa_queries(self, images: torch.Tensor, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """VQA prefix (``lightning_modules/vqa.py``): the instruction-conditioned outputs of the
        dynamic queries, L chosen by the QScaler from the question, and their mask ``[B, n]``."""
        ids, mask = self.tokenize(questions)
        with torch.no_grad():
            lengths = self.text_lengths(questions)
        return self.instructed_query_outputs(self.vision_tokens(images), ids, mask, lengths)

    def itm_scores(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class-1 ITM logit of row-paired images and instructions (``lengths``: the texts' L;
        ``itm_conditioning`` False: BLIP-2's plain ITM pass, see :class:`IdqConfig`)."""
        if not self.config.itm_conditioning:
            n = int(attention_mask.sum(1).max())
            return self.head.itm_logits(
                on_device(image_tokens, self.device),
                input_ids[:, :n].to(self.device),
                attention_mask[:, :n].to(self.device),
                query_embeds=self.bank(self.length.l_init),
            )[:, 1].float()
        if lengths is None:
            lengths = torch.full((input_ids.shape[0],), self.length.l_init, dtype=torch.long)
        n = int(attention_mask.sum(1).max())
        return self.itm_logits(
            on_device(image_tokens, self.device),
            input_ids[:, :n].to(self.device),
            attention_mask[:, :n].to(self.device),
            lengths.to(self.device),
        )[:, 1].float()

    # -- retrieval protocol ------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> Encoded:
        tokens = self.vision_tokens(pixel_values)
        return Encoded(self.head.image_feats(self.query_outputs(tokens)), extra={IMAGE_TOKENS: tokens})

    def encode_texts(self, texts: Sequence[str]) -> Encoded:
        enc = super().encode_texts(texts)
        return Encoded(enc.emb, self.text_lengths(texts), enc.extra)

    def itc_score(self, queries: Encoded, gallery: Encoded) -> torch.Tensor:
        """ITC with each text's L (text vs image, either way); image vs image over all outputs."""
        if queries.lengths is None and gallery.lengths is None:
            return super().itc_score(queries, gallery)

        def block(q: Encoded, g: Encoded) -> torch.Tensor:
            images = g if g.emb.ndim == 3 else q
            per_image = len(q if images is g else g) * images.emb.shape[1]
            return length_limited_max_sim(q, g, chunk=max(1, _MAX_SIM_BUDGET // max(1, per_image)))

        with full_precision(self.device):
            return blockwise_over_gallery(block, queries, gallery, self.device)

    # -- training ----------------------------------------------------------------------
    def _losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        index, images, texts = batch.index, batch.items, batch.texts
        index = index.to(self.device)
        tokens = self.vision_tokens(images)
        if self.training and self._order_pending:
            self._order_bank_by_usage(tokens, texts)
        img = self.head.image_feats(self.query_outputs(tokens))  # [B, L_gallery, E]
        ids, mask = self.tokenize(texts)
        txt = self.text_features(ids, mask)
        everyone = self.global_batch(len(index))  # DDP: negatives from every process (cross_rank)
        index_all = index if everyone is None else everyone.rows(index, grad=False)
        positives = index[:, None] == index_all[None, :]  # [texts, images]: items of the same image
        # [images, every text]
        positives_i2t = positives.T if everyone is None else (index_all[:, None] == index[None, :]).T
        with torch.no_grad():
            self.head.temp.clamp_(0.001, 0.5)
        ls = self.config.itc_label_smoothing
        if self.qscaler is not None:
            qs = self.qscaler(texts)
            r, soft = self._length_inputs(qs)
            columns = (
                None
                if everyone is None
                else GlobalColumns(everyone.rows(txt), everyone.rows(img), everyone.rows(soft), positives_i2t)
            )
            queued = self._oracle_negatives(index_all, img if columns is None else columns.image_queries)
            out, sim_t2i, sim_i2t = dynamic_itc(
                txt,
                img,
                soft,
                r,
                positives,
                self.head.temp,
                self.length,
                ls,
                oracle_negatives=None if queued is None else queued[1],
                columns=columns,
            )
            lengths = qs.length
            out["query_length"], out["r"] = qs.length.float().mean(), qs.r.detach().mean()
        elif everyone is None:
            sim_i2t = itc_similarities(img, txt)
            sim_t2i = sim_i2t.T
            out = {"itc": itc_loss(sim_i2t, self.head.temp, positives.T, ls)}
            lengths = torch.full((len(texts),), self.length.l_init, dtype=torch.long, device=self.device)
        else:
            sim_i2t = itc_similarities(img, everyone.rows(txt))
            sim_t2i = itc_similarities(everyone.rows(img), txt).T
            out = {"itc": itc_loss_blocks(sim_i2t, sim_t2i, self.head.temp, positives_i2t, positives, ls)}
            lengths = torch.full((len(texts),), self.length.l_init, dtype=torch.long, device=self.device)
        if everyone is not None:  # each term is a mean over the local rows: weight it (cross_rank)
            out |= {k: everyone.loss_scale * out[k] for k in ("itc", "itc_lmax", "length", "oracle") if k in out}
        if self.config.itm_weight > 0:
            blocks = ItcBlocks(sim_i2t, sim_t2i, positives_i2t, positives, 0 if everyone is None else everyone.start)
            img_i, txt_i, labels = self.itm_training_pairs(blocks)
            logits = self.itm_logits(*self.itm_inputs(everyone, img_i, txt_i, tokens, ids, mask, lengths))
            out["itm"] = itm_loss(logits, labels)
        out["loss"] = (
            out["itc"]
            + self.config.itm_weight * out.get("itm", 0.0)
            + sum(out.get(k, 0.0) for k in ("itc_lmax", "length", "oracle"))
        )
        return out

    def _length_inputs(self, qs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, soft_length)`` for the losses. In the ``qscaler_warmup`` the head does not learn:
        its outputs enter the losses with the same values and an exactly zero gradient (so under
        DDP every trainable parameter takes part in every step), and
        :meth:`on_before_optimizer_step` drops that gradient, so AdamW skips the head as it
        skipped a head without gradient (weight decay and moments untouched)."""
        if not self._warming_up():
            return qs.r, qs.soft_length
        return scale_grad(qs.r, 0.0), scale_grad(qs.soft_length, 0.0)

    def on_before_optimizer_step(self, optimizer) -> None:
        """In the warm-up, the QScaler head's (zero) gradient is dropped before clipping and the
        optimizer step (see :meth:`_length_inputs`)."""
        if self.qscaler is not None and self._warming_up():
            for p in self.qscaler.head.parameters():
                p.grad = None

    @torch.no_grad()
    def _order_bank_by_usage(self, tokens: torch.Tensor, texts: Sequence[str]) -> None:
        """``bank_order="usage"`` (see the config): sort the checkpoint's query tokens by their
        share of BLIP-2's ITC maxima over this batch's (caption, image) pairs."""
        queries = self.head.query_tokens  # the checkpoint's own tokens (frozen; the bank supersedes them)
        img = self.head.image_feats(self.head.query_outputs(queries, tokens))  # BLIP-2's pass: [B, k, E]
        txt = self.text_features(*self.tokenize(texts))
        wins = per_query_sims(txt, img).argmax(-1).flatten()
        counts = torch.bincount(wins, minlength=img.shape[1])
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # one order on every DDP rank
            torch.distributed.all_reduce(counts)
        order = torch.sort(counts, descending=True, stable=True).indices
        self.bank.reorder_pretrained(order.cpu())
        self.bank_usage = {
            "order": order.tolist(),
            "wins": counts.tolist(),
            "pairs": int(counts.sum()),
            "measured_on": "the first training batch",
        }
        self._order_pending = False

    def _warming_up(self) -> bool:
        """In the first ``qscaler_warmup`` share of the training steps (see the config)."""
        trainer = getattr(self, "_trainer", None)
        if not self.training or trainer is None or self.config.qscaler_warmup == 0:
            return False
        return trainer.global_step < self.config.qscaler_warmup * trainer.estimated_stepping_batches

    def _oracle_negatives(self, index: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(split index, query outputs)`` of the queued images of earlier batches that are not
        in this one (None: none queued); then queue this batch."""
        if not self.training or self.config.oracle_queue == 0 or self.length.oracle_weight == 0:
            return None
        negatives = None
        n = self.config.oracle_queue
        if self._queue is not None:
            q_index, q_img = self._queue
            keep = ~torch.isin(q_index, index)
            negatives = (q_index, q_img) if bool(keep.all()) else (q_index[keep], q_img[keep])
            # the new queue: this batch, then the queued entries (newest first) that still fit; only those are copied
            index, img = torch.cat([index, q_index]), torch.cat([img.detach(), q_img[: max(0, n - len(img))]])
        self._queue = (index[:n].detach(), img[:n].detach())
        return negatives

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        n = len(batch)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        for k in ("itc", "itc_lmax", "itm", "length", "oracle", "oracle_length", "query_length", "r"):
            if k in losses:
                self.log(f"train/{k}", losses[k], batch_size=n, prog_bar=k == "query_length")
        self.log("train/temperature", self.head.temp.detach(), batch_size=n)
        return losses["loss"]

    def configure_optimizers(self):
        scaled = list(self.qscaler.head.parameters()) if self.qscaler is not None else []
        return build_optimizer(
            [*self.head.parameters(), *self.bank.parameters()],
            self.optim,
            self.trainer.estimated_stepping_batches,
            scaled,
            self.config.qscaler_lr_scale,
        )

    # -- cost (lightning_modules/cost.py) ----------------------------------------------
    def cost_components(self, sample) -> dict:
        """BLIP2's ``vision``; per instruction at its L: ``qformer``, the image-side pass it needs
        (nested: an L-query pass, whose outputs are the first L of the gallery pass; full: all
        gallery queries), ``text``, the Q-Former text path plus the QScaler, and ``rerank``, the
        instruction-conditioned ITM pass per pair; ``qformer_index``: the gallery pass per image
        (``gallery_length`` queries; reported, not part of the total)."""
        parts = super().cost_components(sample)
        _, tokens, texts = self._cost_inputs(sample)
        with torch.no_grad():
            lengths = [int(n) for n in self.text_lengths(list(sample.texts)).tolist()]
        nested = self.config.attention == "nested"

        def image_pass(n: int):
            return lambda tok: self.head.image_feats(
                qformer_query_forward(
                    self.head.qformer, self.bank(n), tok.to(self.bank.tokens.dtype), mode=self.config.attention_mode
                )
            )

        def text_pass(text: str):
            if self.qscaler is None:
                return self.head.text_feat
            return lambda ids, mask: (self.head.text_feat(ids, mask), self.qscaler([text]).r)

        def qscaler_tokens(text: str) -> int:
            if self.qscaler is None:
                return 0
            return len(self.qscaler.encoder.tokenize([text])["input_ids"][0])

        def rerank_pass(n: int):
            return lambda tok, ids, mask: self.itm_scores(tok, ids, mask, torch.tensor([n], device=self.device))

        rows = [
            (tokens[i % len(tokens)], ids, mask, n, t)
            for i, ((ids, mask), n, t) in enumerate(zip(texts, lengths, sample.texts))
        ]
        run = lambda n: n if nested else self.gallery_length  # noqa: E731 - queries the image pass runs
        parts["qformer"] = [
            CostCall(image_pass(run(n)), (tok,), key=shape_key(tok, extra=run(n))) for tok, _, _, n, _ in rows
        ]
        parts["text"] = [
            CostCall(text_pass(t), (ids, mask), key=shape_key(ids, extra=qscaler_tokens(t)))
            for _, ids, mask, _, t in rows
        ]
        parts["rerank"] = [
            CostCall(rerank_pass(n), (tok, ids, mask), key=shape_key(tok, ids, extra=n))
            for tok, ids, mask, n, _ in rows
        ]
        parts["qformer_index"] = [
            CostCall(lambda tok: self.head.image_feats(self.query_outputs(tok)), (tok,), key=shape_key(tok))
            for tok in tokens
        ]
        return parts
