"""The IDQ-Former token bank: ``L_max`` learnable query tokens plus pretrained positions.

Algorithm 1 of InstructSee (Sensors 2025), step 2: "select the first L learnable tokens from
the token bank; retrieve the first L positional encodings from a pretrained matrix; add them".

* **Tokens** ``tokens`` ``[1, L_max, H]`` (the shape of BLIP-2's ``query_tokens``). Built
  from a BLIP-2 checkpoint, its 32 query tokens become rows ``0..31`` (exactly). Rows
  ``32..L_max-1`` are initialised by ``extra_init``:

  - ``"copy_noise"`` (default): row ``32 + k`` = row ``k mod 32`` + normal(0, ``init_std``).
    The new queries start inside the distribution the pretrained Q-Former was trained on
    (BLIP-2's tokens are far from a fresh normal(0, 0.02) draw after pre-training); their
    distinct positions and the noise break the symmetry.
  - ``"normal"``: normal(0, ``init_std``), BLIP-2's own initialisation of query tokens.

  Without pretrained tokens (a from-scratch model) all rows are normal(0, ``init_std``).
* **Positions** ``positions`` ``[1, L_max, H]``: BLIP-2 queries have no position embeddings
  (neither in LAVIS nor in transformers), so the "pretrained positional-encoding matrix" is
  taken to be the Q-Former's pretrained *text* position table
  ``embeddings.position_embeddings`` (BERT-style, 512 rows in BLIP-2): rows ``0..L_max-1``
  are **copied** (so learning them never changes the text path). ``learn_positions``
  (default False: frozen, a buffer saved in the state dict) makes them a parameter.
  ``use_positions=False`` drops them (a BLIP-2-like ablation).

``forward(L)`` returns ``tokens[:, :L] + positions[:, :L]``; query ``i`` gets the same
vector for every L, which is what nested query attention needs for prefix consistency.

``reorder_pretrained(order)`` permutes the checkpoint's rows (BLIP-2's queries have no order:
its Q-Former attends over them fully and without positions, so any order is the same model
for BLIP-2; with nested attention the order decides which queries every prefix holds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

ExtraInit = Literal["copy_noise", "normal"]


class TokenBank(nn.Module):
    """``L_max`` learnable query tokens with (by default frozen) pretrained positions."""

    def __init__(
        self,
        l_max: int,
        hidden_size: int,
        *,
        init_tokens: torch.Tensor | None = None,
        position_table: torch.Tensor | None = None,
        extra_init: ExtraInit = "copy_noise",
        init_std: float = 0.02,
        learn_positions: bool = False,
        use_positions: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if extra_init not in ("copy_noise", "normal"):
            raise ValueError(f"extra_init must be 'copy_noise' or 'normal', got {extra_init!r}")
        self.l_max = l_max
        self.hidden_size = hidden_size
        self.extra_init = extra_init
        self.learn_positions = learn_positions
        self.use_positions = use_positions
        tokens = torch.randn(l_max, hidden_size, generator=generator) * init_std
        if init_tokens is not None:
            pre = init_tokens.detach().reshape(-1, init_tokens.shape[-1]).to(torch.float32)
            if pre.shape[1] != hidden_size:
                raise ValueError(f"pretrained query tokens have width {pre.shape[1]}, the bank {hidden_size}")
            if pre.shape[0] > l_max:
                raise ValueError(f"L_max={l_max} is smaller than the checkpoint's {pre.shape[0]} query tokens")
            k = pre.shape[0]
            tokens[:k] = pre
            if extra_init == "copy_noise" and l_max > k:
                src = torch.arange(k, l_max) % k
                tokens[k:] = pre[src] + torch.randn(l_max - k, hidden_size, generator=generator) * init_std
        self.num_pretrained = 0 if init_tokens is None else int(init_tokens.reshape(-1, hidden_size).shape[0])
        self.tokens = nn.Parameter(tokens[None])
        if use_positions:
            if position_table is None:
                raise ValueError(
                    "use_positions=True needs the pretrained position table (embeddings.position_embeddings.weight)"
                )
            if position_table.shape[0] < l_max or position_table.shape[1] != hidden_size:
                raise ValueError(
                    f"the position table {tuple(position_table.shape)} must have >= L_max={l_max} "
                    f"rows of width {hidden_size}"
                )
            pos = position_table.detach()[:l_max].to(torch.float32).clone()[None]
        else:
            pos = torch.zeros(1, l_max, hidden_size)
        if use_positions and learn_positions:
            self.positions = nn.Parameter(pos)
        else:
            self.register_buffer("positions", pos, persistent=True)

    @classmethod
    def from_blip2(cls, query_tokens: torch.Tensor, embeddings: nn.Module, l_max: int, **kwargs) -> TokenBank:
        """From a BLIP-2 model's ``query_tokens`` and ``embeddings`` (``Blip2TextEmbeddings``)."""
        table = cast("Blip2TextEmbeddings", embeddings).position_embeddings.weight
        return cls(l_max, query_tokens.shape[-1], init_tokens=query_tokens, position_table=table, **kwargs)

    @torch.no_grad()
    def reorder_pretrained(self, order: torch.Tensor) -> None:
        """Put the checkpoint's ``k`` rows in ``order`` (a permutation of ``0..k-1``: new row
        ``i`` = old row ``order[i]``). A ``copy_noise`` row ``k + j`` keeps its noise, now
        around the row that sits at its source index ``j mod k`` after the reorder."""
        k = self.num_pretrained
        order = torch.as_tensor(order, dtype=torch.long)
        if k == 0 or sorted(order.tolist()) != list(range(k)):
            raise ValueError(f"the order must be a permutation of the bank's {k} pretrained rows, got {order.tolist()}")
        rows = self.tokens.data[0]
        old = rows[:k].clone()
        if self.extra_init == "copy_noise" and self.l_max > k:
            src = torch.arange(k, self.l_max) % k
            rows[k:] += old[order][src] - old[src]
        rows[:k] = old[order]

    def forward(self, length: int | None = None) -> torch.Tensor:
        """The first ``length`` (default ``L_max``) queries with their positions, ``[1, L, H]``."""
        length = self.l_max if length is None else int(length)
        if not 1 <= length <= self.l_max:
            raise ValueError(f"query length must be in 1..{self.l_max}, got {length}")
        return self.tokens[:, :length] + self.positions[:, :length]

    def extra_repr(self) -> str:
        return (
            f"l_max={self.l_max}, hidden={self.hidden_size}, pretrained_rows={self.num_pretrained}, "
            f"extra_init={self.extra_init}, positions={'learned' if self.learn_positions else 'frozen'}"
            f"{'' if self.use_positions else ' (off)'}"
        )
