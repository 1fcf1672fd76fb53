"""QScaler: instruction complexity r in [0, 1] from a frozen language encoder and a small MLP.

Algorithm 1 of InstructSee (Sensors 2025), step 1: "tokenize I and encode it via a frozen
language encoder to obtain a contextual embedding; predict a normalized complexity score r
using the learnable QScaler module; during training, apply Gaussian noise to r". Only the
head learns (the paper's table: "QScaler initialization: random").

**Frozen encoders** (:class:`FrozenTextEncoder`; never a random one):

* :class:`QFormerTextEncoder` (default for ``--model ours`` at full size): a frozen deep
  copy of the BLIP-2 checkpoint's Q-Former *text* path (``embeddings`` + ``qformer`` run with
  ``query_length=0``), pooled at the first token (``[CLS]``/``[BOS]``, BLIP-2's text
  feature). A copy, so fine-tuning the Q-Former does not move the QScaler's input. In tiny
  size the checkpoint is the tiny BLIP-2 trained first, so the encoder is pretrained too.
  ``layers`` keeps only the copy's first N layers (``model_args.qscaler_layers``): a cheaper
  QScaler, which matters on the instruction path where it runs before the Q-Former. It runs
  through the lean forward of :mod:`lightning_modules.components.qformer_text` (same result
  as transformers' forward; the last layer computes only the pooled [CLS] row).
* :class:`HFTextEncoder`: any transformers text model loaded from a directory, e.g. the tiny
  CLIP checkpoint of ``lightning_modules/clip.py`` (``CLIPModel`` -> its ``text_model``,
  pooled at EOS; the default at tiny size) or all-MiniLM-L6-v2 (mean pooling, as
  sentence-transformers does). A CLIP text tower runs through the lean forward of
  :mod:`lightning_modules.components.clip_text` (same result; with EOS or first-token
  pooling the last layer computes only that row).

The encoder is kept in eval mode and runs under ``torch.no_grad``; it has no trainable
parameters, so the QScaler's gradient stops at the pooled feature.

**Head**: ``LayerNorm -> Linear(H, 256) -> GELU -> Linear(256, 1) -> sigmoid``; the last
layer is small (std 0.01) with its bias at ``logit(r_init)``, so every instruction starts
at ``L_init`` (32, BLIP-2's length) and the losses move it from there. Noise and the length
mapping follow :class:`lightning_modules.components.dynamic_length.LengthConfig`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast, get_args

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, Blip2QFormerModel, CLIPTextModel, PreTrainedModel

from lightning_modules.components.clip_text import clip_text_forward, eos_positions
from lightning_modules.components.dynamic_length import LengthConfig, add_length_noise
from lightning_modules.components.length_groups import encode_in_groups
from lightning_modules.components.qformer_text import text_path_forward

Pool = Literal["cls", "mean", "pooler"]
POOLS: tuple[str, ...] = get_args(Pool)


class FrozenTextEncoder(Protocol):
    """A frozen text encoder: raw texts -> one pooled feature per text, ``[B, dim]``."""

    dim: int

    def tokenize(self, texts: Sequence[str], **kw): ...

    def encode(self, texts: Sequence[str], max_padding: float | None = None) -> torch.Tensor: ...

    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pool: Pool, pooler: torch.Tensor | None) -> torch.Tensor:
    if pool == "cls":
        return hidden[:, 0]
    if pool == "mean":
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if pooler is None:
        raise ValueError("pool='pooler' needs a model that returns pooler_output")
    return pooler


class _Frozen(nn.Module):
    """Base: frozen parameters, always in eval mode, no autograd graph; raw texts are tokenized
    here (``tokenizer``, ``max_length`` of the subclass) and encoded by the subclass's ``encode_ids``."""

    tokenizer: Callable[..., Any]
    max_length: int | None

    def tokenize(self, texts: Sequence[str], **kw):
        """The encoder's own tokenization of ``texts``, truncated (to ``max_length`` when set)."""
        if self.max_length:
            kw.setdefault("max_length", self.max_length)
        return self.tokenizer(list(texts), truncation=True, **kw)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], max_padding: float | None = None) -> torch.Tensor:
        """Pooled features of ``texts``; with ``max_padding``, encoded in groups of similar
        token length (:func:`~lightning_modules.components.length_groups.encode_in_groups`)."""
        batch = self.tokenize(texts, padding=True, return_tensors="pt").to(self.device)
        return encode_in_groups(self.encode_ids, batch["input_ids"], batch["attention_mask"], max_padding)

    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features of tokenized texts (each subclass's own forward)."""
        raise NotImplementedError

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _Frozen:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


#: submodules of a Q-Former layer that only the query (image) side uses
IMAGE_SIDE = ("crossattention", "intermediate_query", "output_query")


class QFormerTextEncoder(_Frozen):
    """A frozen copy of a BLIP-2 Q-Former's text path (``Blip2TextEmbeddings`` + ``Blip2QFormerModel``)."""

    qformer: Blip2QFormerModel

    def __init__(
        self,
        embeddings: nn.Module,
        qformer: Blip2QFormerModel,
        tokenizer,
        *,
        pool: Pool = "cls",
        max_length: int | None = None,
        copy_modules: bool = True,
        layers: int | None = None,
    ) -> None:
        super().__init__()
        self.embeddings = copy.deepcopy(embeddings) if copy_modules else embeddings
        self.qformer = copy.deepcopy(qformer) if copy_modules else qformer
        if layers is not None:
            self._keep_first_layers(layers, copy_modules)
        if copy_modules:
            self._drop_image_side()
        self.tokenizer = tokenizer
        self.pool = pool
        self.max_length = max_length
        self.dim = int(self.qformer.config.hidden_size)
        self._freeze()

    def _keep_first_layers(self, layers: int, copied: bool) -> None:
        """Keep the copy's first ``layers`` layers (the QScaler reads an earlier layer's [CLS])."""
        total = int(self.qformer.config.num_hidden_layers)
        if not 1 <= layers <= total:
            raise ValueError(
                f"model_args.qscaler_layers must be in [1, {total}] (the Q-Former's text layers), got {layers}"
            )
        if not copied:
            raise ValueError("qscaler_layers needs copy_modules=True: the shared Q-Former must keep its layers")
        config = copy.deepcopy(self.qformer.config)
        config.num_hidden_layers = layers
        self.qformer.config = self.qformer.encoder.config = config
        self.qformer.encoder.layer = nn.ModuleList(list(self.qformer.encoder.layer)[:layers])

    def _drop_image_side(self) -> None:
        """The copy only runs text (``query_length=0``), which never reaches a layer's
        cross-attention or query feed-forward: drop those weights (at full size 77 M of the
        copy's 186 M parameters)."""
        for layer in self.qformer.encoder.layer:
            for name in IMAGE_SIDE:
                if hasattr(layer, name):
                    delattr(layer, name)

    @torch.no_grad()
    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features of tokenized texts (the lean text-path forward of ``qformer_text``)."""
        hidden = text_path_forward(
            self.embeddings, self.qformer, input_ids, attention_mask, first_token_only=self.pool == "cls"
        )
        return _pool(hidden, attention_mask, self.pool, None)


def _is_clip_text(model: nn.Module) -> bool:
    """A transformers ``CLIPTextModel`` (the layout :func:`clip_text_forward` runs)."""
    return isinstance(model, CLIPTextModel)


class HFTextEncoder(_Frozen):
    """A frozen transformers text model (CLIP text tower, BERT/MiniLM, ...)."""

    def __init__(
        self, model: PreTrainedModel, tokenizer, *, pool: Pool = "mean", max_length: int | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pool = pool
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)
        self.lean_clip = _is_clip_text(model)
        self._freeze()

    @classmethod
    def from_pretrained(
        cls, path: str, *, pool: Pool | None = None, local_files_only: bool = True, max_length: int | None = None
    ) -> HFTextEncoder:
        """Load a directory; a ``CLIPModel`` contributes its ``text_model`` (pooled at EOS by default)."""
        model = AutoModel.from_pretrained(path, local_files_only=local_files_only)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
        if hasattr(model, "text_model"):  # CLIPModel and friends
            model = model.text_model
            pool = pool or "pooler"
        return cls(model, tokenizer, pool=pool or "mean", max_length=max_length)

    @torch.no_grad()
    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features of tokenized texts."""
        if self.lean_clip:
            if self.pool == "mean":
                return _pool(clip_text_forward(self.model, input_ids, attention_mask), attention_mask, "mean", None)
            rows = eos_positions(self.model, input_ids) if self.pool == "pooler" else torch.zeros_like(input_ids[:, 0])
            return clip_text_forward(self.model, input_ids, attention_mask, rows)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return _pool(out.last_hidden_state, attention_mask, self.pool, getattr(out, "pooler_output", None))


@dataclass
class QScalerOutput:
    """``r`` before noise, ``r_used`` (noisy in training), ``soft_length`` (continuous, from
    ``r_used``) and ``length`` (integer L from ``r_used``, what the model runs with), all ``[B]``."""

    r: torch.Tensor
    r_used: torch.Tensor
    soft_length: torch.Tensor
    length: torch.Tensor


class QScalerHead(nn.Module):
    """Pooled instruction feature ``[B, dim]`` -> complexity logit ``[B]``."""

    def __init__(self, dim: int, hidden: int = 256, r_init: float = 0.5, out_std: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        last = cast(nn.Linear, self.net[-1])
        nn.init.normal_(last.weight, std=out_std)
        r0 = min(max(r_init, 1e-4), 1 - 1e-4)
        nn.init.constant_(last.bias, math.log(r0 / (1 - r0)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


class QScaler(nn.Module):
    """Frozen encoder + learnable head: instructions -> r, L (see the module docstring).

    ``memo``: in training, the frozen features of up to this many distinct instructions are
    kept in memory, so epochs after the first skip the encoder (it is frozen and in eval
    mode: an instruction's feature never changes; 0 = encode every time). Evaluation always
    encodes. ``group_padding``: the encoder runs texts in groups of similar token length,
    none padded by more than this share (None: one padded batch).
    """

    def __init__(
        self,
        encoder: FrozenTextEncoder,
        length: LengthConfig | None = None,
        hidden: int = 256,
        memo: int = 0,
        group_padding: float | None = None,
    ) -> None:
        super().__init__()
        if memo < 0:
            raise ValueError(f"QScaler memo must be >= 0, got {memo}")
        self.encoder = encoder
        self.length = length or LengthConfig()
        self.head = QScalerHead(encoder.dim, hidden, r_init=self.length.r_init)
        self.memo = memo
        self.group_padding = group_padding
        self._memo: dict[str, torch.Tensor] = {}

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """The frozen pooled features, on the head's device, outside any autograd graph."""
        device = cast(nn.Linear, self.head.net[1]).weight.device
        if not (self.training and self.memo):
            return self.encoder.encode(texts, self.group_padding).detach().to(device)
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            encoded = self.encoder.encode(missing, self.group_padding).detach().to(device)
            if len(self._memo) + len(missing) <= self.memo:
                self._memo.update(zip(missing, encoded))
            else:
                known = dict(zip(missing, encoded))
                return torch.stack([self._memo[t] if t in self._memo else known[t] for t in texts])
        return torch.stack([self._memo[t] for t in texts])

    def forward(self, texts: Sequence[str] | None = None, *, features: torch.Tensor | None = None) -> QScalerOutput:
        """From raw ``texts`` or precomputed ``features`` (e.g. cached frozen features)."""
        if features is None:
            if texts is None:
                raise ValueError("QScaler needs texts or features")
            features = self.features(texts)
        r = torch.sigmoid(self.head(features))
        r_used = add_length_noise(r, self.length.noise_std, self.training)
        return QScalerOutput(
            r=r, r_used=r_used, soft_length=self.length.soft_length(r_used), length=self.length.hard_length(r_used)
        )
