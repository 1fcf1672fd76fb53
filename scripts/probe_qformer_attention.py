"""How selective is a trained tiny Q-Former's self-attention in the ITM pass? (issue 28)

A trained tiny checkpoint of the BLIP2 family (``--model blip2`` or ``ours``) is loaded with the
run's DataModule; ``--n`` test captions are paired with their own images (cached frozen
tokens) and run through the ITM pass of the Q-Former (the head's ``itm_logits``, BLIP-2's
fixed queries) with hooks on each layer's self- and cross-attention. Printed per layer: the
share of the queries' attention that goes to the text tokens, beside the share that uniform
attention would give (the text's share of the tokens); the std of that layer's self-attention
query and key weights; and, on cross-attention layers, the entropy of the queries' attention over
the image tokens as a share of the uniform entropy (1 = uniform). With the Q-Former init std of BERT (0.02) at the tiny width the two shares are equal:
the attention stays uniform (docs/experiments/tiny-itm.md). Nothing here is timed.

Example::

    python scripts/probe_qformer_attention.py --model blip2 \\
        --checkpoint <cache>/checkpoints/blip2__synthetic__tiny__<hash>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.config import default_cache_dir  # noqa: E402
from benchmark.store import checkpoint_with_data  # noqa: E402


def attention_inputs(
    head, tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
    """In the ITM pass of the pairs: each Q-Former layer's self-attention input ``[B, 32 + T, H]``,
    and by layer index the cross-attention layers' query input ``[B, 32, H]``."""
    seen: list[torch.Tensor] = []
    cross: dict[int, torch.Tensor] = {}

    def hidden(args, kwargs) -> torch.Tensor:
        return (args[0] if args else kwargs["hidden_states"]).detach()

    hooks = []
    for i, layer in enumerate(head.qformer.encoder.layer):
        hooks.append(
            layer.attention.attention.register_forward_hook(
                lambda _m, args, kwargs, _out: seen.append(hidden(args, kwargs)), with_kwargs=True
            )
        )
        if getattr(layer, "has_cross_attention", False):
            hooks.append(
                layer.crossattention.attention.register_forward_hook(
                    lambda _m, args, kwargs, _out, i=i: cross.__setitem__(i, hidden(args, kwargs)), with_kwargs=True
                )
            )
    try:
        with torch.no_grad():
            head.itm_logits(tokens, ids, mask)
    finally:
        for h in hooks:
            h.remove()
    return seen, cross


def _attention_probs(
    attention, queries: torch.Tensor, keys: torch.Tensor, heads: int, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, heads, n_query, n_key]`` softmax of a BERT attention module's scaled dot products
    (``key_mask [B, n_key]``: 0 = padding, left out)."""
    b, n_query, width = queries.shape
    q = attention.query(queries).view(b, n_query, heads, -1).transpose(1, 2)
    k = attention.key(keys).view(b, keys.shape[1], heads, -1).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / (width // heads) ** 0.5
    if key_mask is not None:
        logits = logits.masked_fill(key_mask[:, None, None, :] == 0, float("-inf"))
    return logits.softmax(-1)


@torch.no_grad()
def cross_entropy_share(attention, queries: torch.Tensor, image: torch.Tensor, heads: int) -> float:
    """Mean entropy of the queries' cross-attention over the image tokens / log(number of tokens)."""
    probs = _attention_probs(attention, queries, image, heads)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return float(entropy.mean() / torch.log(torch.tensor(float(image.shape[1]))))


@torch.no_grad()
def attention_to_text(attention, hidden: torch.Tensor, mask: torch.Tensor, n_query: int, heads: int) -> float:
    """Mean share of the queries' self-attention (softmax over queries + valid text) on the text."""
    valid = torch.cat([torch.ones(hidden.shape[0], n_query), mask.float()], dim=1)
    probs = _attention_probs(attention, hidden, hidden, heads, valid)
    return float(probs[:, :, :n_query, n_query:].sum(-1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="blip2", choices=["blip2", "ours"])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a trained tiny suite checkpoint folder")
    ap.add_argument("--cache-dir", default=None, help="the cache holding the dataset and features")
    ap.add_argument("--n", type=int, default=64, help="test captions (1..5000)")
    args = ap.parse_args()
    if not 1 <= args.n <= 5000:
        ap.error("--n must be in [1, 5000]")
    if not args.checkpoint.is_dir():
        ap.error(f"--checkpoint {args.checkpoint}: not a folder")
    model, dm = checkpoint_with_data(args.model, args.checkpoint, args.cache_dir or default_cache_dir())
    eval_set = dm.eval_set("test")
    table = dm.item_table("test")
    n = min(args.n, eval_set.n_queries)
    tokens = table[torch.as_tensor(eval_set.source[:n])].float()
    ids, mask = model.tokenize(list(eval_set.instructions[:n]))
    head = model.head
    n_query = head.query_tokens.shape[1]
    uniform = float((mask.sum(1) / (mask.sum(1) + n_query)).mean())
    heads = head.qformer_config.num_attention_heads
    inputs, cross = attention_inputs(head, tokens, ids, mask)
    print(
        "| layer | query attention on the text | uniform share | W_q std | W_k std | cross-attention entropy / uniform |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for i, (layer, hidden) in enumerate(zip(head.qformer.encoder.layer, inputs, strict=True)):
        att = layer.attention.attention
        share = attention_to_text(att, hidden, mask, n_query, heads)
        ent = (
            f"{cross_entropy_share(layer.crossattention.attention, cross[i], tokens, heads):.4f}" if i in cross else "-"
        )
        print(
            f"| {i} | {share:.4f} | {uniform:.4f} | {att.query.weight.std():.4f} | {att.key.weight.std():.4f} | {ent} |"
        )


if __name__ == "__main__":
    main()
