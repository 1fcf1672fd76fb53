"""The BLIP-2 Q-Former head over a frozen vision tower (Li et al., 2023, arXiv:2301.12597).

:class:`QFormerHead` holds the trainable part of BLIP-2's retrieval model, with the same
parameter names as transformers' ``Blip2ForImageTextRetrieval`` (so a hub checkpoint maps
onto it one to one): ``query_tokens``, ``embeddings`` (``Blip2TextEmbeddings``), ``qformer``
(``Blip2QFormerModel``), ``vision_projection``, ``text_projection``, ``itm_head``; plus the
learnable ITC temperature ``temp`` (LAVIS; not part of the transformers checkpoint).

The seams the BLIP2 family builds on (IDQ-Former passes its own query embeddings and a
query mask; BLIP-2 passes its fixed 32 ``query_tokens``):

* :meth:`QFormerHead.query_outputs` -- run the Q-Former for given query embeddings
  ``[B, L, H]`` (optional ``query_mask [B, L]``) against vision tokens ``[B, N, D]`` ->
  query outputs ``[B, L, H]``;
* :meth:`QFormerHead.image_feats` -- query outputs -> L2-normalised ``[B, L, E]``;
* :meth:`QFormerHead.text_feat` -- token ids -> L2-normalised text CLS embedding ``[B, E]``;
* :meth:`QFormerHead.itm_logits` -- image-text matching logits ``[B, 2]`` of paired
  (vision tokens, text) rows, averaged over the (valid) query outputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Blip2QFormerConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2TextEmbeddings

HEAD_CONFIG = "qformer_head.json"
HEAD_WEIGHTS = "qformer_head.safetensors"
#: parameters of the head that a transformers ``Blip2ForImageTextRetrieval`` checkpoint lacks
EXTRA_PARAMETERS = ("temp",)


@dataclass(frozen=True)
class HeadShape:
    """What the head's shapes depend on besides the Q-Former config."""

    num_query_tokens: int = 32
    embed_dim: int = 256  # image_text_hidden_size
    temp_init: float = 0.07


class QFormerHead(nn.Module):
    def __init__(self, qformer_config: Blip2QFormerConfig, shape: HeadShape) -> None:
        super().__init__()
        if not qformer_config.use_qformer_text_input:
            raise ValueError("the Q-Former head needs qformer_config.use_qformer_text_input=True (text path)")
        self.qformer_config = qformer_config
        self.shape = shape
        h = qformer_config.hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, shape.num_query_tokens, h))
        self.embeddings = Blip2TextEmbeddings(qformer_config)
        self.qformer = Blip2QFormerModel(qformer_config)
        self.vision_projection = nn.Linear(h, shape.embed_dim)
        self.text_projection = nn.Linear(h, shape.embed_dim)
        self.itm_head = nn.Linear(h, 2)
        self.temp = nn.Parameter(torch.tensor(shape.temp_init))

    # -- construction --------------------------------------------------------------------
    @classmethod
    def random(cls, qformer_config: Blip2QFormerConfig, shape: HeadShape, seed: int | None = None) -> QFormerHead:
        """A randomly initialised head (BERT-style init, std ``initializer_range``; LAVIS's
        normal init of the query tokens -- transformers' zero init would make all queries equal)."""
        head = cls(qformer_config, shape)
        std = qformer_config.initializer_range
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for m in head.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
                if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            head.query_tokens.copy_(torch.randn(head.query_tokens.shape, generator=gen) * std)
        return head

    @classmethod
    def from_hf_retrieval(cls, hf, temp_init: float = 0.07) -> QFormerHead:
        """Take over the Q-Former parts of a loaded ``Blip2ForImageTextRetrieval`` (no copies)."""
        shape = HeadShape(hf.config.num_query_tokens, hf.config.image_text_hidden_size, temp_init)
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.qformer_config, head.shape = hf.config.qformer_config, shape
        for name in ("query_tokens", "embeddings", "qformer", "vision_projection", "text_projection", "itm_head"):
            setattr(head, name, getattr(hf, name))
        head.temp = nn.Parameter(torch.tensor(temp_init))
        return head

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"qformer_config": self.qformer_config.to_dict(), "shape": asdict(self.shape)}
        (directory / HEAD_CONFIG).write_text(json.dumps(meta, indent=2))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, directory / HEAD_WEIGHTS)

    @classmethod
    def load(cls, directory: Path) -> QFormerHead:
        directory = Path(directory)
        meta = json.loads((directory / HEAD_CONFIG).read_text())
        head = cls(Blip2QFormerConfig(**meta["qformer_config"]), HeadShape(**meta["shape"]))
        head.load_state_dict(load_file(directory / HEAD_WEIGHTS), strict=True)
        return head

    # -- the seams -----------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.qformer_config.hidden_size)

    def query_outputs(
        self, query_embeds: torch.Tensor, image_tokens: torch.Tensor, query_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Q-Former query outputs ``[B, L, H]`` for query embeddings ``[B or 1, L, H]`` over
        vision tokens ``[B, N, D]``; ``query_mask`` -- a ``[B, L]`` padding mask (1 = valid) or
        any attention mask transformers' Q-Former takes (e.g. a 4-D additive one) -- is passed
        to its self-attention."""
        b = image_tokens.shape[0]
        query_embeds = query_embeds.expand(b, -1, -1)
        image_tokens = image_tokens.to(self.query_tokens.dtype)
        out = self.qformer(
            query_embeds=query_embeds,
            attention_mask=query_mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long, device=image_tokens.device),
        )
        return out.last_hidden_state

    def image_feats(self, query_outputs: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected query outputs ``[B, L, E]`` (the ITC image side)."""
        return F.normalize(self.vision_projection(query_outputs), dim=-1)

    def text_feat(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected text CLS embedding ``[B, E]`` (the ITC text side: text only)."""
        emb = self.embeddings(input_ids=input_ids)
        out = self.qformer(query_embeds=emb, query_length=0, attention_mask=attention_mask)
        return F.normalize(self.text_projection(out.last_hidden_state[:, 0, :]), dim=-1)

    def itm_logits(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        query_embeds: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        full_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ITM logits ``[B, 2]`` of row-paired (image, text): queries and text attend to each
        other, queries cross-attend to the image; the head's logits are averaged over the
        valid query outputs (``query_mask [B, L]``, 1 = valid). ``query_embeds`` default to the
        head's own ``query_tokens``. ``full_attention_mask`` (e.g. a 4-D additive mask over
        queries + text, see ``components/query_attention.py``) replaces the padding mask built
        from ``query_mask`` and ``attention_mask``."""
        b = image_tokens.shape[0]
        queries = (self.query_tokens if query_embeds is None else query_embeds).expand(b, -1, -1)
        n_q = queries.shape[1]
        if query_mask is None:
            query_mask = torch.ones(b, n_q, dtype=attention_mask.dtype, device=attention_mask.device)
        emb = self.embeddings(input_ids=input_ids, query_embeds=queries)
        out = self.qformer(
            query_embeds=emb,
            query_length=n_q,
            attention_mask=full_attention_mask
            if full_attention_mask is not None
            else torch.cat([query_mask.to(attention_mask.dtype), attention_mask], dim=1),
            encoder_hidden_states=image_tokens.to(queries.dtype),
            encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long, device=image_tokens.device),
        )
        return self.itm_average(out.last_hidden_state[:, :n_q, :], query_mask)

    def itm_average(self, query_outputs: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ITM logits ``[B, 2]``: the head on each query output ``[B, n, H]``, averaged over the
        queries (``query_mask`` ``[B, n]``: those that count). In float32 whatever the autocast: in
        bf16 a logit of 4-16 has a step of 0.03-0.06, coarser than the ITC differences that
        re-ranking adds it to (the Q-Former pass before it keeps the run's precision)."""
        with torch.autocast(device_type=query_outputs.device.type, enabled=False):
            logits = self.itm_head(query_outputs.float())  # [B, n, 2]
            if query_mask is None:
                return logits.mean(1)
            w = query_mask.to(logits.dtype)[..., None]
            return (logits * w).sum(1) / w.sum(1).clamp(min=1)
