"""Text towers run in groups of similar length: the same rows as one padded batch, fewer padded tokens."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.blip2 import Blip2Config, Blip2Retrieval
from lightning_modules.clip import ClipConfig, ClipRetrieval
from lightning_modules.components.length_groups import by_length, encode_in_groups, length_batches, right_padded_lengths
from lightning_modules.optim import OptimConfig

TEXTS = [
    "a red circle",
    "a large blue square left of a green star on a pink background near a small cross",
    "show me a yellow cross",
    "star",
    "a small green circle above a large red square on a grey background",
    "a blue star",
]
TINY_CLIP = dict(
    image_size=16, patch_size=8, vision_width=32, vision_layers=1, text_width=32, text_layers=2, heads=2, embed_dim=16
)


def test_length_batches_bound_the_padding_of_every_group():
    costs = torch.tensor([2, 3, 3, 4, 6, 9, 10, 30])
    groups = length_batches(len(costs), 100, costs, 0.5)
    assert [(s, e) for s, e in groups] == [(0, 3), (3, 5), (5, 7), (7, 8)]
    for s, e in groups:
        assert costs[e - 1] <= 1.5 * costs[s]
    assert length_batches(5, 2, None, 0.5) == [(0, 2), (2, 4), (4, 5)]


def test_by_length_returns_rows_in_input_order_with_each_group_trimmed():
    lengths = torch.tensor([5, 1, 9, 2, 5, 10])
    seen = []

    def run(rows, width):
        seen.append((sorted(rows.tolist()), width))
        return torch.stack([lengths[rows].float(), torch.full((len(rows),), float(width))], dim=1)

    out = by_length(lengths, run, 0.25)
    assert torch.equal(out[:, 0], lengths.float())  # every row back in its place
    assert all(out[i, 1] <= 1.25 * lengths[i] for i in range(len(lengths)))  # padded by at most 25 %
    assert sorted(r for rows, _ in seen for r in rows) == list(range(len(lengths)))
    seen.clear()
    by_length(lengths, run, None)
    assert seen == [(list(range(6)), 10)]


def _clip(padding):
    torch.manual_seed(0)
    return ClipRetrieval.create(ClipConfig(**TINY_CLIP, text_group_padding=padding), OptimConfig(), TEXTS).eval()


def test_clip_text_groups_give_the_padded_batch_embeddings_and_gradients():
    grouped, padded = _clip(0.25), _clip(None)
    calls = []
    grouped.model.text_model.register_forward_hook(
        lambda _m, args, kw, _out: calls.append(kw["input_ids"].shape), with_kwargs=True
    )
    a, b = grouped.encode_texts(TEXTS).emb, padded.encode_texts(TEXTS).emb
    assert len(calls) > 2 and sum(n * t for n, t in calls) < len(TEXTS) * max(t for _, t in calls)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    a.sum().backward()
    b.sum().backward()
    wa = grouped.model.text_model.encoder.layers[0].mlp.fc1.weight.grad
    wb = padded.model.text_model.encoder.layers[0].mlp.fc1.weight.grad
    torch.testing.assert_close(wa, wb, atol=1e-5, rtol=1e-4)


def test_qformer_text_groups_give_the_padded_batch_features(tmp_path):
    torch.manual_seed(0)
    clip = ClipRetrieval.create(ClipConfig(**TINY_CLIP), OptimConfig(), TEXTS)
    clip.save_checkpoint(tmp_path / "clip")
    feats = []
    for padding in (0.25, None):
        torch.manual_seed(0)
        cfg = Blip2Config(
            vision_checkpoint=str(tmp_path / "clip"),
            qformer_hidden=32,
            qformer_layers=2,
            qformer_heads=2,
            qformer_intermediate=64,
            embed_dim=16,
            num_query_tokens=4,
            text_group_padding=padding,
        )
        model = Blip2Retrieval.create(cfg, OptimConfig(), TEXTS).eval()
        feats.append(model.encode_texts(TEXTS).emb)
    torch.testing.assert_close(feats[0], feats[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", [ClipConfig, Blip2Config])
def test_negative_group_padding_is_rejected_by_name(config):
    with pytest.raises(ValueError, match="text_group_padding"):
        config(text_group_padding=-0.1)


def test_a_left_padded_batch_is_refused_by_name():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert right_padded_lengths(right).tolist() == [3, 4, 1]
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="padding_side='right'.*text_group_padding"):
        right_padded_lengths(left)
    with pytest.raises(ValueError, match="padding_side='right'"):
        encode_in_groups(lambda ids, mask: ids.float(), left, left, 0.5)
    # the way out the message names: no groups, one call on the left-padded batch as it is
    assert torch.equal(encode_in_groups(lambda ids, mask: ids * mask, left + 5, left, None), (left + 5) * left)
