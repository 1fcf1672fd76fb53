"""Faithfulness of the token-reduction vision towers (DynamicViT, CrossGET) and their runner.

Tiny random CLIP and BLIP-2 vision encoders (48 px, patch 8: 36 patches + CLS, 4 layers).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import (
    Blip2VisionConfig,
    Blip2VisionModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
)

from benchmark.measure.flops import UnsupportedOpError, count_flops
from lightning_modules.components.crossget import (
    DEFAULT_R,
    CrossGETTower,
    Matching,
    complete_graph_match,
    cross_alignment_loss,
    merge_tokens,
)
from lightning_modules.components.dynamicvit import (
    DynamicViTTower,
    dynamicvit_loss,
    keep_counts,
    keep_mask_to_attention_mask,
    pruning_layers,
    ratio_loss,
    token_distill_loss,
)
from lightning_modules.components.vit_runner import ViTRunner

ATOL = 1e-5


def _clip(attn: str = "sdpa") -> CLIPVisionModel:
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        image_size=48, patch_size=8, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4
    )
    cfg._attn_implementation = attn
    return CLIPVisionModel(cfg).eval()


def _blip2() -> Blip2VisionModel:
    torch.manual_seed(0)
    cfg = Blip2VisionConfig(
        image_size=48,
        patch_size=8,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        initializer_range=0.02,
    )
    model = Blip2VisionModel(cfg).eval()
    with torch.no_grad():  # non-zero q/v biases, so the fused-qkv bias layout is exercised
        for layer in model.encoder.layers:
            layer.self_attn.qkv.bias.normal_(0, 0.1)
    return model


def _reference(model) -> torch.Tensor:
    """What the BLIP2 family's tower returns: all last-hidden-state tokens, post-layernorm."""
    with torch.no_grad():
        out = model(PIXELS).last_hidden_state
        return model.post_layernorm(out) if isinstance(model, CLIPVisionModel) else out


torch.manual_seed(1)
PIXELS = torch.randn(3, 3, 48, 48)
ENCODERS = {"clip": _clip, "blip2": _blip2}


@pytest.fixture(params=sorted(ENCODERS))
def encoder(request):
    return ENCODERS[request.param]()


# -- runner ---------------------------------------------------------------------------
def test_runner_equals_transformers_forward(encoder):
    with torch.no_grad():
        out = ViTRunner(encoder)(PIXELS)
    torch.testing.assert_close(out, _reference(encoder), atol=ATOL, rtol=0)
    assert out.shape == (3, 37, encoder.config.hidden_size)


def test_runner_unwraps_clip_model_and_shares_parameters():
    torch.manual_seed(0)
    model = CLIPModel(
        CLIPConfig(
            text_config=dict(
                vocab_size=50,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=8,
            ),
            vision_config=dict(
                image_size=48,
                patch_size=8,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=4,
                num_attention_heads=2,
            ),
        )
    ).eval()
    runner = ViTRunner(model)
    assert runner.vision is model.vision_model and runner.kind == "clip"
    assert {id(p) for p in runner.parameters()} <= {id(p) for p in model.parameters()}
    with torch.no_grad():
        torch.testing.assert_close(runner(PIXELS), _reference(model.vision_model), atol=ATOL, rtol=0)


def test_proportional_attention_equals_duplicated_tokens():
    """A token of size 2 with log(2) added to its logits acts as two identical tokens."""
    runner = ViTRunner(_clip())
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 4, 3, 32) for _ in range(3))
    dup = [t[:, :, [0, 1, 2, 2]] for t in (q, k, v)]
    full = runner.attend(*dup)
    bias = torch.tensor([1.0, 1.0, 2.0]).log().view(1, 1, 1, 3)
    merged = runner.attend(q, k, v, bias=bias)
    torch.testing.assert_close(merged, full[:, :3], atol=ATOL, rtol=0)


# -- DynamicViT -----------------------------------------------------------------------
def test_dynamicvit_schedule():
    assert pruning_layers(12) == [3, 6, 9] and pruning_layers(4) == [1, 2, 3] and pruning_layers(39) == [9, 19, 29]
    assert keep_counts(196, 0.7) == [137, 96, 67]
    assert keep_counts(36, 0.7) == [25, 17, 12]
    assert keep_counts(100, 0.7) == [70, 49, 34]  # 0.7**2 * 100 = 48.99999...
    with pytest.raises(ValueError):
        pruning_layers(2)


def test_dynamicvit_keep_ratio_one_is_the_backbone(encoder):
    tower = DynamicViTTower(encoder, keep_rate=1.0).eval()
    with torch.no_grad():
        out = tower(PIXELS)
    torch.testing.assert_close(out, _reference(encoder), atol=ATOL, rtol=0)
    assert tower.last_tokens_per_layer == [37, 37, 37, 37]


def test_dynamicvit_inference_really_removes_tokens(encoder):
    tower = DynamicViTTower(encoder).eval()
    assert tower.keep_counts == [25, 17, 12]
    with torch.no_grad():
        out = tower(PIXELS)
    assert out.shape == (3, 13, tower.hidden_size)
    assert tower.last_tokens_per_layer == tower.tokens_per_layer() == [37, 26, 18, 13]
    # the CLS token is always kept, first
    with torch.no_grad():
        cls_only = tower.runner.post(tower.runner.embed(PIXELS))[:, 0]
    assert not torch.allclose(out[:, 0], cls_only)  # (it went through the layers)


def _all_keep(log_probs, prev):
    """Keep everything, with the straight-through gradient of the keep probability."""
    soft = log_probs.exp()[..., 0]
    return soft - soft.detach() + 1.0


def test_dynamicvit_training_all_keep_equals_backbone_and_trains_predictors(encoder):
    tower = DynamicViTTower(encoder).train()
    out = tower.forward_train(PIXELS, sampler=_all_keep)
    assert out.tokens.shape == (3, 37, tower.hidden_size)  # nothing removed while training
    torch.testing.assert_close(out.tokens, _reference(encoder), atol=ATOL, rtol=0)
    assert torch.equal(out.keep_mask, torch.ones(3, 37))
    out.tokens.square().sum().backward()
    for predictor in tower.predictors:
        grads = [p.grad for p in predictor.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_dynamicvit_gumbel_training_masks_and_ratio_loss_trains_predictors(encoder):
    torch.manual_seed(3)
    tower = DynamicViTTower(encoder).train()
    out = tower.forward_train(PIXELS)
    assert len(out.stage_decisions) == 3 and all(d.shape == (3, 36) for d in out.stage_decisions)
    for prev, cur in zip(out.stage_decisions, out.stage_decisions[1:]):
        assert bool((cur <= prev).all())  # cumulative: once dropped, dropped
    assert set(out.keep_mask.unique().tolist()) <= {0.0, 1.0} and bool((out.keep_mask[:, 0] == 1).all())
    loss = ratio_loss(out.stage_decisions, tower.keep_ratios)
    loss.backward()
    assert tower.predictors[0].out_conv[-2].weight.grad.abs().sum() > 0


def test_dynamicvit_masked_training_matches_real_removal(encoder):
    """With top-k decisions instead of Gumbel samples, the masked-attention training path
    gives the kept tokens the same values as the inference path that removes tokens."""
    tower = DynamicViTTower(encoder).eval()
    counts = iter(tower.keep_counts)

    def topk(log_probs, prev):
        score = log_probs[..., 0].masked_fill(prev == 0, float("-inf"))
        keep = score.topk(next(counts), dim=1).indices
        return torch.zeros_like(prev).scatter(1, keep, 1.0)

    with torch.no_grad():
        masked = tower.forward_train(PIXELS, sampler=topk)
        removed = tower(PIXELS)
    kept = masked.tokens[masked.keep_mask.bool()].view(3, 13, -1)
    torch.testing.assert_close(kept, removed, atol=1e-4, rtol=0)


def test_dynamicvit_losses():
    d = [torch.ones(2, 10), torch.zeros(2, 10)]
    assert ratio_loss(d, [1.0, 0.0]) == 0
    assert torch.isclose(ratio_loss(d, [0.5, 0.5]), torch.tensor(0.25))
    t = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0.0]])
    assert token_distill_loss(t, t + 0, mask) == 0
    teacher = t.clone()
    teacher[:, 2:] += 10  # only dropped tokens differ
    assert token_distill_loss(t, teacher, mask) == 0
    tower = DynamicViTTower(_clip()).train()
    out = tower.forward_train(PIXELS)
    emb = out.tokens[:, 0]
    parts = dynamicvit_loss(torch.tensor(1.0), out, tower.teacher_forward(PIXELS), emb, emb.detach(), tower.keep_ratios)
    assert set(parts) == {"loss", "task", "ratio", "embedding_distill", "token_distill"}
    expected = 1.0 + 2.0 * parts["ratio"] + 0.5 * parts["embedding_distill"] + 0.5 * parts["token_distill"]
    torch.testing.assert_close(parts["loss"], expected)


# -- CrossGET -------------------------------------------------------------------------
def test_crossget_r0_is_the_backbone(encoder):
    tower = CrossGETTower(encoder, r=0).eval()
    with torch.no_grad():
        out = tower(PIXELS)
    torch.testing.assert_close(out, _reference(encoder), atol=ATOL, rtol=0)
    assert tower.last_tokens_per_layer == [37, 37, 37, 37]
    assert torch.equal(tower.last_sizes, torch.ones(3, 37))
    # the official variant (every token also attends to the cross token) is a different model
    with torch.no_grad():
        visible = CrossGETTower(encoder, r=0, cross_token_visible=True)(PIXELS)
    assert not torch.allclose(visible, out, atol=1e-3)


def test_crossget_merges_r_per_layer_and_preserves_size(encoder):
    tower = CrossGETTower(encoder).eval()
    assert tower.r == DEFAULT_R == 6
    with torch.no_grad():
        out = tower(PIXELS)
    assert tower.tokens_per_layer() == tower.last_tokens_per_layer == [37, 31, 25, 19]
    assert out.shape == (3, tower.output_tokens(), tower.hidden_size) == (3, 13, tower.hidden_size)
    sizes = tower.last_sizes
    assert sizes.shape == (3, 13) and bool((sizes >= 1).all())
    torch.testing.assert_close(sizes.sum(dim=1), torch.full((3,), 37.0))
    assert bool((sizes[:, 0] == 1).all())  # CLS never merges


def test_crossget_r_is_clamped_to_half_the_tokens():
    tower = CrossGETTower(_clip(), r=30).eval()
    with torch.no_grad():
        out = tower(PIXELS)
    assert tower.last_tokens_per_layer == tower.tokens_per_layer() == [37, 19, 10, 6]
    assert out.shape[1] == 4
    torch.testing.assert_close(tower.last_sizes.sum(dim=1), torch.full((3,), 37.0))


def test_complete_graph_match_protects_cls_and_cross_token():
    torch.manual_seed(4)
    metric, query = torch.randn(2, 12, 8), torch.randn(2, 8)
    m = complete_graph_match(metric, query, r=5)
    assert m.src.shape == (2, 5) and m.dst_all.shape == (2, 7) and m.dst.shape == (2, 5)
    for b in range(2):
        src, dst_all = set(m.src[b].tolist()), m.dst_all[b].tolist()
        assert not src & set(dst_all) and src | set(dst_all) == set(range(12))
        assert 0 in dst_all and 11 in dst_all and dst_all == sorted(dst_all)
        targets = {dst_all[j] for j in m.dst[b].tolist()}
        assert not targets & {0, 11}
    torch.testing.assert_close(m.weight.sum(-1), torch.full((2, 5), 2.0))


def _reference_match(metric: torch.Tensor, query: torch.Tensor, r: int):
    """Loops over the reference description: sources and their destinations, per image."""
    out = []
    for mb, qb in zip(metric, query):
        t = mb.shape[0]
        m = torch.nn.functional.normalize(mb, dim=-1)
        sim = m @ m.T
        usable = [i for i in range(1, t - 1)]  # CLS (0) and the cross token (t - 1) never match
        best = {i: max(sim[i, j].item() for j in usable if j != i) for i in usable}
        order = sorted(usable, key=lambda i: -best[i])
        imp = (m @ torch.nn.functional.normalize(qb, dim=0)).tolist()
        score = {}
        for rank, i in enumerate(order):
            later = order[rank + 1 :]
            score[i] = imp[i] - max(sim[i, j].item() for j in later) if later else float("inf")
        src = sorted(usable, key=lambda i: score[i])[:r]
        rest = [j for j in range(t) if j not in src]
        dst = {i: max((j for j in rest if j in usable), key=lambda j: sim[i, j].item()) for i in src}
        out.append(dst)
    return out


def test_complete_graph_match_equals_a_brute_force_reference():
    torch.manual_seed(8)
    metric, query = torch.randn(4, 15, 8), torch.randn(4, 8)
    for r in (1, 3, 6):
        m = complete_graph_match(metric, query, r)
        got = [
            {s: dst_all[d] for s, d in zip(src.tolist(), dst.tolist())}
            for src, dst_all, dst in zip(m.src, m.dst_all.tolist(), m.dst)
        ]
        assert got == _reference_match(metric, query, r)


def test_complete_graph_match_merges_duplicates_first():
    """Two identical tokens are each other's best match: one of them is a source into the other
    (with equal importance, so equal weights)."""
    torch.manual_seed(5)
    metric = torch.randn(1, 8, 16)
    metric[0, 5] = metric[0, 3]
    m = complete_graph_match(metric, torch.randn(1, 16), r=1)
    src = m.src[0, 0].item()
    assert src in (3, 5) and m.dst_all[0, m.dst[0, 0]].item() == 8 - src
    torch.testing.assert_close(m.weight, torch.ones(1, 1, 2))


def test_merge_tokens_is_size_weighted_average_with_equal_importance():
    x = torch.tensor([[[0.0], [1.0], [4.0], [10.0]]])
    size = torch.tensor([[[1.0], [1.0], [3.0], [1.0]]])
    match = Matching(
        src=torch.tensor([[1]]), dst_all=torch.tensor([[0, 2, 3]]), dst=torch.tensor([[1]]), weight=torch.ones(1, 1, 2)
    )
    merged, new_size = merge_tokens(x, size, match)
    torch.testing.assert_close(new_size, torch.tensor([[[1.0], [4.0], [1.0]]]))
    torch.testing.assert_close(merged, torch.tensor([[[0.0], [(1 + 12) / 4], [10.0]]]))


def _reference_merge(x, size, match):
    """The weighted ensemble as the reference states it: size-weighted tokens, sources added
    into destinations with weights (w0, w1 - 1) on the pre-merge values, sizes add, divide."""
    xs = x * size
    out, sizes = [], []
    for bi in range(x.shape[0]):
        kept = xs[bi, match.dst_all[bi]].clone()
        ksize = size[bi, match.dst_all[bi]].clone()
        before = kept.clone()
        for k, (s, d) in enumerate(zip(match.src[bi].tolist(), match.dst[bi].tolist())):
            w0, w1 = match.weight[bi, k]
            kept[d] = kept[d] + w0 * xs[bi, s] + (w1 - 1) * before[d]
            ksize[d] = ksize[d] + size[bi, s]
        out.append(kept / ksize)
        sizes.append(ksize)
    return torch.stack(out), torch.stack(sizes)


def test_merge_tokens_equals_the_reference_values_and_gradients():
    torch.manual_seed(9)
    x = torch.randn(2, 7, 5, requires_grad=True)
    size = torch.randint(1, 4, (2, 7, 1)).float()
    w0 = torch.rand(2, 3, 1) * 2
    match = Matching(
        src=torch.tensor([[2, 4, 5], [1, 3, 6]]),
        dst_all=torch.tensor([[0, 1, 3, 6], [0, 2, 4, 5]]),
        dst=torch.tensor([[1, 1, 2], [3, 3, 3]]),  # several sources into one destination
        weight=torch.cat([w0, 2 - w0], dim=-1),
    )
    got, got_size = merge_tokens(x, size, match)
    ref, ref_size = _reference_merge(x, size, match)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got_size, ref_size)
    g = torch.randn_like(ref)
    (grad_got,) = torch.autograd.grad((got * g).sum(), x)
    (grad_ref,) = torch.autograd.grad((ref * g).sum(), x)
    torch.testing.assert_close(grad_got, grad_ref)


def test_crossget_training_backpropagates_through_merges(encoder):
    tower = CrossGETTower(encoder).train()
    out = tower.forward_train(PIXELS)
    out.tokens.square().mean().backward()
    grad = tower.runner.layers[0].mlp.fc1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_crossget_alignment_loss_trains_deltas_and_reports_guidance(encoder):
    tower = CrossGETTower(encoder).train()
    assert tower.guidance == "self-guided"
    out = tower.forward_train(PIXELS)
    assert out.cross_tokens.shape == (4, 3, tower.hidden_size)
    proj = torch.nn.Linear(tower.hidden_size, 16)
    image = tower.project_cross_tokens(out.cross_tokens, proj)
    text = torch.randn(3, 16)
    loss = cross_alignment_loss(image, text)
    assert loss > 0
    loss.backward()
    assert tower.cross_delta.grad is not None and tower.cross_delta.grad.abs().sum() > 0
    assert proj.weight.grad is None  # projection weights are detached, as in the official code
    with torch.no_grad():
        tower.cross_delta.add_(0.01)
    assert tower.guidance == "cross-guided"


def test_cross_alignment_loss_properties():
    torch.manual_seed(6)
    a, b = torch.randn(4, 5, 8), torch.randn(4, 5, 8)
    assert cross_alignment_loss(a, a.clone()).abs() < 1e-6
    torch.testing.assert_close(cross_alignment_loss(a, b), cross_alignment_loss(b, a))
    assert cross_alignment_loss(a, b) <= torch.log(torch.tensor(2.0)) + 1e-6  # JS divergence bound
    with pytest.raises(ValueError):
        cross_alignment_loss(a, torch.randn(3, 5, 8))


# -- FLOPs ----------------------------------------------------------------------------
def test_flop_handles_count_sdpa_like_eager_attention():
    warnings.filterwarnings("ignore")
    x = PIXELS[:1]
    sdpa, eager = count_flops(_clip("sdpa"), x), count_flops(_clip("eager"), x)
    assert sdpa.total == eager.total
    assert sdpa.by_operator["scaled_dot_product_attention"] == eager.by_operator["matmul"] > 0


def test_flop_counter_fails_loudly_on_unhandled_matmul():
    class AddMv(torch.nn.Module):
        def forward(self, m, v):
            return torch.addmv(v, m, v)

    with pytest.raises(UnsupportedOpError, match="addmv"):
        count_flops(AddMv(), (torch.randn(3, 3), torch.randn(3)))


def test_token_reduction_meets_the_flops_target():
    warnings.filterwarnings("ignore")
    model, x = _clip(), PIXELS[:1]
    base = count_flops(ViTRunner(model), x).total
    dvit = count_flops(DynamicViTTower(model).eval(), x).total
    cget = count_flops(CrossGETTower(model).eval(), x).total
    assert dvit <= 0.75 * base and cget <= 0.75 * base


def test_linear_flops_follow_the_token_schedule():
    """fvcore's linear MACs equal what the per-layer token counts predict, exactly."""
    warnings.filterwarnings("ignore")
    model, x = _clip(), PIXELS[:1]
    d, d_ff = 128, 256
    attn, mlp = 4 * d * d, 2 * d * d_ff  # q, k, v, out projections; fc1 + fc2 (per token)
    dvit = DynamicViTTower(model).eval()
    predictor = d * d + d * (d // 2) + (d // 2) * (d // 4) + (d // 4) * 2
    n = dvit.tokens_per_layer()  # [37, 26, 18, 13]
    patches_seen = [n[i - 1] - 1 for i in dvit.pruning_layers]  # predictors score the patches present
    expected = sum(n) * (attn + mlp) + sum(patches_seen) * predictor
    assert count_flops(dvit, x).by_operator["linear"] == expected
    cget = CrossGETTower(model).eval()
    n = [t + 1 for t in cget.tokens_per_layer()]  # + the cross token
    expected = sum(n) * attn + sum(t - cget.r for t in n) * mlp  # the MLP runs after the merge
    assert count_flops(cget, x).by_operator["linear"] == expected


def test_reduction_state_round_trips_without_the_encoder():
    enc = _clip()
    for make in (lambda: DynamicViTTower(enc, keep_rate=0.6), lambda: CrossGETTower(enc, r=4)):
        a, b = make().eval(), make().eval()
        with torch.no_grad():
            for p in a.reduction_parameters():
                p.add_(torch.randn_like(p) * 0.1)
        state = a.reduction_state_dict()
        assert not any(k.startswith("runner") for k in state)  # the encoder is not in it
        b.load_reduction_state_dict(state)
        assert a.method_config() == b.method_config()
        with torch.no_grad():
            torch.testing.assert_close(a(PIXELS), b(PIXELS))
    assert CrossGETTower(enc).method_config()["r"] == DEFAULT_R


def test_keep_mask_to_attention_mask():
    mask = keep_mask_to_attention_mask(torch.tensor([[1.0, 0.0, 1.0]], requires_grad=True))
    assert mask.dtype == torch.long and mask.tolist() == [[1, 0, 1]]


def test_towers_wrap_the_suites_frozen_vision_towers():
    from lightning_modules.components.image_transform import ImageTransform
    from lightning_modules.components.vision_tower import Blip2VisionTower, ClipVisionTower

    for tower in (ClipVisionTower(_clip(), ImageTransform(48, 48)), Blip2VisionTower(_blip2(), ImageTransform(48, 48))):
        with torch.no_grad():
            ref = tower(PIXELS)
            torch.testing.assert_close(DynamicViTTower(tower, keep_rate=1.0).eval()(PIXELS), ref, atol=ATOL, rtol=0)
            torch.testing.assert_close(CrossGETTower(tower, r=0).eval()(PIXELS), ref, atol=ATOL, rtol=0)
