"""Cost of BLIP2-IDQ-Former (``--model ours``) against BLIP2 (``--model blip2``), side by side.

The cost benchmark of issue 4 on the tiny configs of the synthetic benchmark. Both models
are loaded in one process, measured with the same inputs, threads and timing loop, and every
figure is printed as ``ours / blip2``. Three paths:

* **Instruction-conditioned path** (one image with one instruction through the Q-Former,
  as in ITM re-ranking and VQA). BLIP2 runs its 32 queries; ours runs the L its QScaler
  gives that instruction (nested query attention, ``IdqFormerRetrieval.itm_logits``).
  FLOPs are averaged over *every* synthetic test instruction (L and the instruction length
  T vary per instruction; mean, std, min, max and per complexity level are reported).
  Rows: the Q-Former ITM pass alone (L given), and -- because ours must first predict L --
  the same plus the QScaler (its frozen text encoder and an MLP). Wall time: one
  (image, instruction) pair per call (batch 1), over ``--n-instructions`` real test pairs;
  "ITM pass" times the Q-Former call with ids and L precomputed, "end to end" starts from
  the raw instruction (tokenise, QScaler for ours, Q-Former). And as re-ranking runs it:
  one instruction with ``--topk`` images in one call (tokenisation and the QScaler once per
  instruction, the Q-Former on k pairs), reported per pair.
* **Query time over a pre-encoded gallery**: the test gallery (1000 images) is encoded once
  by each model; then ``--n-queries`` test instructions are encoded and scored against it
  exactly as the evaluation does (``model.score``: ITC first stage, top ``k_test`` re-ranked
  by ITM; and ``model.itc_score``: ITC only). Text encoding is inside the timed step (ours'
  QScaler runs there). Reported per query.
* **Gallery indexing** (ours encodes once at ``L_max``): Q-Former FLOPs and wall time per
  image of ``encode_images`` on frozen vision tokens, and the index size per image (query
  embeddings; and with the vision tokens kept for re-ranking, which both models store).
  The frozen vision tower is the same for both; its FLOPs are printed once for context.

FLOPs: fvcore multiply-adds (:func:`benchmark.measure.flops.count_flops`, with the sdpa and
baddbmm handles; "GFLOPs" below are fvcore's convention, i.e. GMACs). A Q-Former pass costs
exactly a quadratic polynomial in (L, T) (projections and feed-forwards are linear in the
token counts, self-attention quadratic in L + T, cross-attention linear in L), so the
script traces a small grid, fits the six coefficients (least squares, rounded), checks them exactly
against extra traces at real (L, T) pairs, and then evaluates every test instruction; if a
check fails it falls back to tracing each distinct (L, T) of a sample. Wall time:
:func:`benchmark.measure.throughput.measure_throughput` (``eval()``, ``inference_mode``,
warm-up, median of >= 5 timed runs), with the two models measured in alternating rounds
(``--rounds``; median of the rounds) so background load hits both alike.

Checkpoints: ours is the checkpoint of the shipped base config of ``bench run --model ours``
in ``<cache>/checkpoints`` (found by its training hash through
``benchmark.store.ensure_checkpoint``, so an ablation's checkpoint in the same cache is never
taken; ``--ours-checkpoint`` names another), and BLIP2 the BLIP2 checkpoint ours was fine-tuned
from when it is there (the fair pair: same Q-Former architecture), else the newest
``blip2__synthetic__tiny__*``. ``--train`` creates missing ones through the library (the same
``ensure_checkpoint``, see :func:`default_ours_checkpoint`). ``--random-init`` builds random
models instead (no training): ``--random-size small`` for the smoke test, ``tiny`` (the shipped
tiny shapes) or ``base`` (the shapes of ``Salesforce/blip2-itm-vit-g``'s Q-Former over ViT-g
tokens: what the cost rows become at the real model's size; random weights change no FLOP and
no shape, so cost carries over while quality does not exist; docs/experiments/tiny-speed.md).

    python scripts/bench_idq.py --out /tmp/bench_idq.json
    python scripts/bench_idq.py --train          # train the tiny checkpoints first if absent
    python scripts/bench_idq.py --threads 1      # on an oversubscribed machine (see the load warning)
    python scripts/bench_idq.py --random-init --random-size small --n-queries 16
    python scripts/bench_idq.py --random-init --random-size base --n-instructions 8 --topk 8 --n-queries 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from benchmark.config import ConfigError, build_run_config, default_cache_dir, model_defaults
from benchmark.environment import environment as suite_environment
from benchmark.measure.component_flops import eager_masks
from benchmark.measure.flops import count_flops
from benchmark.measure.throughput import measure_throughput
from benchmark.registry import DATASETS
from benchmark.store import data_root, ensure_checkpoint
from lightning_modules.blip2 import Blip2Config, Blip2Retrieval
from lightning_modules.components.image_transform import ImageTransform
from lightning_modules.components.qformer_head import HeadShape, QFormerHead
from lightning_modules.components.vision_tower import ClipVisionTower
from lightning_modules.components.word_tokenizer import build_word_tokenizer
from lightning_modules.idq_former import IdqConfig, IdqFormerRetrieval
from lightning_modules.optim import OptimConfig

#: every metric the script reports (keys of ``result["metrics"]``)
METRICS = (
    "instr_qformer_gflops",
    "instr_total_gflops",
    "instr_itm_ms",
    "instr_e2e_ms",
    "instr_topk_ms",
    "query_rerank_ms",
    "query_itc_ms",
    "index_qformer_gflops",
    "index_ms_per_image",
    "index_emb_bytes",
    "index_total_bytes",
    "queries_per_instruction",
)
LABELS = {
    "instr_qformer_gflops": "instr. path: Q-Former GFLOPs (mean over test instr.)",
    "instr_total_gflops": "instr. path: GFLOPs incl. QScaler (strict)",
    "instr_itm_ms": "instr. path: ms/instr., ITM pass (L given), B=1",
    "instr_e2e_ms": "instr. path: ms/instr., end to end from text, B=1",
    "instr_topk_ms": "instr. path: ms/pair, 1 instr. x k images, from text",
    "query_rerank_ms": "query time: ms/query, ITC + ITM re-rank",
    "query_itc_ms": "query time: ms/query, ITC only",
    "index_qformer_gflops": "indexing: Q-Former GFLOPs/image",
    "index_ms_per_image": "indexing: ms/image (Q-Former + proj.)",
    "index_emb_bytes": "index size: bytes/image (query embeddings)",
    "index_total_bytes": "index size: bytes/image (+ vision tokens)",
    "queries_per_instruction": "queries per instruction (mean L)",
}
#: (target ratio ours/blip2, or None = reported only)
TARGETS = {
    "instr_qformer_gflops": 0.7,
    "instr_total_gflops": 0.7,
    "instr_itm_ms": 1.0,
    "instr_e2e_ms": 1.0,
    "instr_topk_ms": 1.0,
    "query_rerank_ms": 1.0,
}
GIGA = 1e9


# -- models -----------------------------------------------------------------------------
def default_ours_checkpoint(cache_dir: str, train: bool, threads: int) -> Path:
    """The checkpoint ``bench run --model ours`` uses, with the shipped base config of ``ours``.

    ``benchmark.store.ensure_checkpoint`` finds it by its training hash; with ``train`` it
    trains what is missing (the tiny CLIP and BLIP2 it depends on, then ours) into the same
    cache folders ``bench run`` uses -- without the evaluation pass, which a cost benchmark
    does not need. The thread count is set on torch only (not in the run config), so the
    checkpoint hashes stay those of the default runs.
    """
    torch.set_num_threads(threads)
    cfg = build_run_config(
        model_defaults("ours"), {"model": "ours", "dataset": "synthetic", "size": "tiny", "cache_dir": cache_dir}
    )
    t = time.perf_counter()
    try:
        ckpt, trained = ensure_checkpoint(cfg, progress=False, train=train)
    except ConfigError as e:
        raise SystemExit(f"{e}; or run this script with --train") from None
    if trained:
        print(
            f"[train] ours (and its blip2 / clip dependencies): {ckpt} ({time.perf_counter() - t:.0f} s, "
            f"{threads} thread(s))",
            flush=True,
        )
    return ckpt


def load_trained(cache_dir: str, blip2_path: str | None, ours_dir: Path):
    base = json.loads((ours_dir / "suite_config.json").read_text()).get("blip2_checkpoint")
    if blip2_path:
        blip2_dir, why = Path(blip2_path), "given"
    elif base and Path(base).is_dir():
        blip2_dir, why = Path(base), "the checkpoint ours was built on"
    else:
        raise SystemExit(
            f"ours ({ours_dir}) names no BLIP2 checkpoint that exists here ({base!r}): pass --blip2-checkpoint"
        )
    print(f"checkpoint ours : {ours_dir}")
    print(f"checkpoint blip2: {blip2_dir} ({why})")
    if base and Path(base).resolve() != blip2_dir.resolve():
        print(f"  WARNING: ours was built on {base}, not on the BLIP2 compared here")
    blip2 = Blip2Retrieval.load_checkpoint(blip2_dir).eval()
    ours = IdqFormerRetrieval.load_checkpoint(ours_dir).eval()
    return blip2, ours, {"blip2": str(blip2_dir), "ours": str(ours_dir), "blip2_choice": why}


# --random-init architectures: (CLIP vision tower, Blip2Config Q-Former fields). "base" has the
# shapes of Salesforce/blip2-itm-vit-g (BERT-base Q-Former, 12 layers, cross-attention every 2nd,
# over 257 ViT-g tokens of width 1408) on a one-layer tower of ViT-g's width and token count
# (the tower is shared and outside every timed path; only its output shape matters here).
RANDOM_SIZES: dict[str, tuple[dict, dict]] = {
    "tiny": (
        dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=48,
            patch_size=8,
        ),
        {},
    ),
    "small": (
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        dict(qformer_hidden=32, qformer_layers=2, qformer_heads=4, qformer_intermediate=64, embed_dim=16),
    ),
    "base": (
        dict(
            hidden_size=1408,
            intermediate_size=6144,
            num_hidden_layers=1,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        dict(qformer_hidden=768, qformer_layers=12, qformer_heads=12, qformer_intermediate=3072, embed_dim=256),
    ),
}


def build_random(
    size: str, vocab_texts: Sequence[str], workdir: Path, mean_length: float = 20.0, qscaler_layers: int | None = None
):
    """Random BLIP2 (on a random CLIP tower) and an IDQ-Former built on it, as the tests do.

    ``size``: a key of :data:`RANDOM_SIZES`. The QScaler is the full-size default (a frozen
    copy of the Q-Former's text encoder, read after ``qscaler_layers`` layers); its last layer is
    re-drawn so that L varies between instructions around ``mean_length`` (a fresh one gives ~32
    to all).
    """
    torch.manual_seed(0)
    vcfg, qf = RANDOM_SIZES[size]
    tower = ClipVisionTower(
        CLIPVisionModel(CLIPVisionConfig(**vcfg)), ImageTransform(vcfg["image_size"], vcfg["image_size"])
    )
    cfg = Blip2Config(cache_features=False, dropout=0.0, **qf)
    tok = build_word_tokenizer(list(vocab_texts), cfg.text_length)
    head = QFormerHead.random(
        cfg.qformer_config(len(tok), tok.pad_token_id, tower.hidden_size),
        HeadShape(cfg.num_query_tokens, cfg.embed_dim, cfg.temp_init),
        seed=0,
    )
    blip2 = Blip2Retrieval(tower, head, tok, cfg)
    blip2_dir = workdir / "blip2_random"
    blip2.save_checkpoint(blip2_dir)
    ours = IdqFormerRetrieval.create(
        IdqConfig(
            blip2_checkpoint=str(blip2_dir),
            cache_features=False,
            dropout=0.0,
            qscaler_encoder="qformer",
            qscaler_layers=qscaler_layers,
        ),
        OptimConfig(),
    )
    with torch.no_grad():  # spread L around mean_length (the paper's mean is 17.8), as a trained QScaler might
        last = ours.qscaler.head.net[-1]
        last.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
        feats = ours.qscaler.features(list(vocab_texts)[:256])
        last.weight.div_(ours.qscaler.head(feats).std().clamp(min=1e-6))
        target = torch.logit(ours.length.ratio(torch.tensor(mean_length)))
        last.bias.add_(target - ours.qscaler.head(feats).mean())
    return blip2.eval(), ours.eval(), {"blip2": f"random ({size})", "ours": f"random ({size}), QScaler re-drawn"}


def datamodule(cache_dir: str, options: dict | None):
    over = {"model": "blip2", "dataset": "synthetic", "size": "tiny", "cache_dir": cache_dir}
    if options:
        over["data"] = {"options": options}
    cfg = build_run_config(model_defaults("blip2"), over)
    dm = DATASETS.get(cfg.dataset)(replace(cfg.data, root=data_root(cfg)), seed=cfg.seed)
    dm.prepare_data()
    return dm, cfg


@torch.no_grad()
def gallery_tokens(model, dm, cache_dir: str) -> torch.Tensor:
    """Frozen vision tokens ``[n_images, N, D]`` of the test gallery (the on-disk feature cache if enabled)."""
    loader = model.item_loader(Path(cache_dir) / "features") if hasattr(model, "item_loader") else None
    dm.set_transform(model.image_transform())
    dm.set_item_loader(loader)
    return torch.cat([model.vision_tokens(items) for _, items in dm.gallery_dataloader()])


# -- FLOPs ------------------------------------------------------------------------------
class Call(nn.Module):
    """``fn(*tensors)`` as a module, for fvcore (positional tensors in, tensors out)."""

    def __init__(self, fn: Callable, *owners: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.owners = nn.ModuleList(owners)

    def forward(self, *inputs: torch.Tensor):
        return self.fn(*inputs)


def flops(fn: Callable, owners: Sequence[nn.Module], inputs: tuple[torch.Tensor, ...]) -> int:
    with warnings.catch_warnings(), eager_masks():  # transformers' eager mask path (see there)
        warnings.simplefilter("ignore")
        return count_flops(Call(fn, *owners), inputs).total


def _ids(base: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[1, t]`` token ids (a real instruction's, tiled or cut; FLOPs depend on the shape only) and mask."""
    ids = base.repeat(1, -(-t // base.shape[1]))[:, :t]
    return ids, torch.ones_like(ids)


def _three_lengths(T: np.ndarray) -> list[int]:
    """Three distinct token counts to trace (min, median, max; padded upwards): a quadratic needs three."""
    vals = sorted({int(T.min()), int(np.median(T)), int(T.max())})
    while len(vals) < 3:
        vals.append(vals[-1] + 1)
    return vals


def _features(lt: np.ndarray) -> np.ndarray:
    L, T = lt[:, 0].astype(np.float64), lt[:, 1].astype(np.float64)
    return np.stack([np.ones_like(L), L, T, L * L, L * T, T * T], 1)


class PolyFlops:
    """FLOPs(L, T) of a Q-Former call, exact: quadratic in (L, T), fitted on traces, checked on others."""

    def __init__(
        self, trace: Callable[[int, int], int], grid: Sequence[tuple[int, int]], check: Sequence[tuple[int, int]]
    ) -> None:
        self.trace = trace
        self.traced: dict[tuple[int, int], int] = {}
        pts = np.array(sorted(set(grid)))
        y = np.array([self._get(int(a), int(b)) for a, b in pts], dtype=np.float64)
        # least squares (minimum norm where L is fixed); exactness is what the checks decide
        self.coef = np.linalg.lstsq(_features(pts), y, rcond=None)[0]
        self.exact = all(abs(self._poly(int(a), int(b)) - v) < 0.5 for (a, b), v in zip(pts, y)) and all(
            abs(self._poly(a, b) - self._get(a, b)) < 0.5 for a, b in set(check)
        )

    def _get(self, L: int, T: int) -> int:
        if (L, T) not in self.traced:
            self.traced[(L, T)] = self.trace(L, T)
        return self.traced[(L, T)]

    def _poly(self, L: int, T: int) -> float:
        return float(np.round(_features(np.array([[L, T]])) @ self.coef)[0])

    def __call__(self, L: int, T: int) -> int:
        return int(self._poly(L, T)) if self.exact else self._get(L, T)


def instruction_flops(
    blip2,
    ours,
    tokens1: torch.Tensor,
    ids_base: torch.Tensor,
    L: np.ndarray,
    T: np.ndarray,
    fallback_sample: int,
    seed: int = 0,
    qs_ids_base: torch.Tensor | None = None,
    Tq: np.ndarray | None = None,
) -> dict:
    """Per-instruction FLOPs of BLIP2's and ours' ITM pass and ours' QScaler, over all (L, T) given;
    the QScaler's encoder may have a tokenizer of its own (``qs_ids_base``, token counts ``Tq``)."""
    qs_ids_base = ids_base if qs_ids_base is None else qs_ids_base
    Tq = T if Tq is None else Tq

    def trace_blip2(_L: int, t: int) -> int:
        ids, mask = _ids(ids_base, t)
        return flops(lambda x, i, m: blip2.head.itm_logits(x, i, m), [blip2], (tokens1, ids, mask))

    def trace_ours(n: int, t: int) -> int:
        ids, mask = _ids(ids_base, t)
        ln = torch.tensor([n])
        return flops(lambda x, i, m: ours.itm_logits(x, i, m, ln), [ours], (tokens1, ids, mask))

    def trace_qscaler(_L: int, t: int) -> int:
        ids, mask = _ids(qs_ids_base, t)
        enc = ours.qscaler.encoder

        def fn(i, m):
            return ours.qscaler.head(enc.encode_ids(i, m))

        return flops(fn, [ours.qscaler], (ids, mask))

    t_vals = _three_lengths(T)
    lo, hi = ours.length.l_base, ours.gallery_length
    l_vals = sorted({lo, (lo + hi) // 2, hi})
    rng = np.random.default_rng(seed)
    pairs = sorted({(int(a), int(b)) for a, b in zip(L, T)})
    check = [pairs[i] for i in rng.choice(len(pairs), size=min(2, len(pairs)), replace=False)]
    nq = blip2.head.query_tokens.shape[1]
    f_b = PolyFlops(lambda _l, t: trace_blip2(nq, t), [(nq, t) for t in t_vals], [(nq, t) for _, t in check])
    f_o = PolyFlops(trace_ours, list(itertools.product(l_vals, t_vals)), check)
    tq_vals = _three_lengths(Tq)
    tq_check = [(0, int(Tq[i])) for i in rng.choice(len(Tq), size=min(2, len(Tq)), replace=False)]
    f_q = PolyFlops(lambda _l, t: trace_qscaler(0, t), [(0, t) for t in tq_vals], tq_check)
    idx = np.arange(len(L))
    exact = f_b.exact and f_o.exact and f_q.exact
    if not exact:
        print("  WARNING: FLOPs are not an exact quadratic in (L, T) here; tracing a sample of instructions")
        idx = rng.choice(len(L), size=min(fallback_sample, len(L)), replace=False)
    b = np.array([f_b(nq, int(T[i])) for i in idx], dtype=np.float64)
    o = np.array([f_o(int(L[i]), int(T[i])) for i in idx], dtype=np.float64)
    q = np.array([f_q(0, int(Tq[i])) for i in idx], dtype=np.float64)
    t_ref = int(np.median(T))
    curve = {int(n): f_o(int(n), t_ref) / GIGA for n in sorted({1, lo, 16, 24, nq, hi} & set(range(1, hi + 1)))}
    return {
        "index": idx,
        "blip2": b,
        "ours": o,
        "qscaler": q,
        "exact_polynomial": exact,
        "traces": len(f_b.traced) + len(f_o.traced) + len(f_q.traced),
        "ours_gflops_by_L_at_median_T": curve,
        "blip2_gflops_at_median_T": f_b(nq, t_ref) / GIGA,
        "median_T": t_ref,
    }


# -- wall time --------------------------------------------------------------------------
def timed(
    steps: dict[str, Callable[[], object]], items: int, rounds: int, warmup: int, runs: int, min_time_s: float
) -> dict[str, dict]:
    """``measure_throughput`` of each step, the models alternating over ``rounds`` (ABBA order)."""
    names = list(steps)
    per: dict[str, list[float]] = {n: [] for n in names}
    first: dict[str, float] = {}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            tp = measure_throughput(steps[n], items, warmup=warmup, runs=runs, min_time_s=min_time_s)
            per[n].append(1e3 / tp.items_per_s)
            first.setdefault(n, tp.cold_first_call_s)
    return {
        n: {"ms": statistics.median(v), "rounds_ms": v, "cold_first_call_s": first[n], "items_per_call": items}
        for n, v in per.items()
    }


# -- report -----------------------------------------------------------------------------
def environment() -> dict:
    """The suite's own environment record (benchmark.environment: versions, device, threads), plus
    the load average when the benchmark starts (a shared CPU skews every timing)."""
    return suite_environment() | {"loadavg_start": list(os.getloadavg())}


def table(metrics: dict) -> str:
    head = ("metric", "blip2", "ours", "ratio", "target", "pass/fail")
    rows = []
    for k in METRICS:
        m = metrics[k]
        fmt = (
            (lambda x: f"{x:.4f}")
            if "gflops" in k
            else (lambda x: f"{x:.0f}")
            if "bytes" in k
            else (lambda x: f"{x:.3f}")
            if k.endswith("_ms") or "ms_" in k
            else (lambda x: f"{x:.2f}")
        )
        target = "-" if m["target"] is None else f"<= {m['target']:.2f}"
        verdict = "-" if m["pass"] is None else ("PASS" if m["pass"] else "FAIL")
        rows.append((LABELS[k], fmt(m["blip2"]), fmt(m["ours"]), f"{m['ratio']:.3f}", target, verdict))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def metric(blip2: float, ours: float, key: str) -> dict:
    target = TARGETS.get(key)
    ratio = ours / blip2 if blip2 else float("nan")
    return {
        "blip2": float(blip2),
        "ours": float(ours),
        "ratio": float(ratio),
        "target": target,
        "pass": None if target is None else bool(ratio <= target),
    }


def _stats(x: np.ndarray) -> dict:
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max())}


# -- main -------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cache-dir", default=default_cache_dir(), help="suite cache (checkpoints, data, features)")
    p.add_argument("--train", action="store_true", help="train missing tiny checkpoints through the library first")
    p.add_argument("--random-init", action="store_true", help="random models, no checkpoints (see --random-size)")
    p.add_argument(
        "--random-size",
        choices=tuple(RANDOM_SIZES),
        default="tiny",
        help="--random-init: architecture (tiny: the shipped tiny one; small: smoke tests; base: the "
        "shapes of Salesforce/blip2-itm-vit-g's Q-Former on ViT-g features)",
    )
    p.add_argument(
        "--random-length",
        type=float,
        default=20.0,
        help="--random-init: mean L the re-drawn QScaler head gives the test instructions",
    )
    p.add_argument(
        "--random-qscaler-layers",
        type=int,
        default=None,
        help="--random-init: the QScaler reads its frozen Q-Former text copy after this many layers "
        "(model_args.qscaler_layers; default: all)",
    )
    p.add_argument("--random-n-test", type=int, default=32, help="--random-init: synthetic test images generated")
    p.add_argument("--blip2-checkpoint", default=None)
    p.add_argument("--ours-checkpoint", default=None)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for the measurements")
    p.add_argument(
        "--train-threads",
        type=int,
        default=1,
        help="--train: torch threads while training (1 avoids OpenMP stalls on a loaded machine)",
    )
    p.add_argument("--n-instructions", type=int, default=16, help="(image, instruction) pairs timed at batch 1")
    p.add_argument(
        "--topk",
        type=int,
        default=16,
        help="images per instruction when timing the instruction path as re-ranking runs it",
    )
    p.add_argument("--n-queries", type=int, default=128, help="test queries timed against the whole gallery")
    p.add_argument("--index-batch", type=int, default=64, help="images per encode_images call when timing indexing")
    p.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5, help="timed runs per round (>= 5)")
    p.add_argument("--min-time", type=float, default=0.5, help="minimum timed seconds per round")
    p.add_argument("--fallback-sample", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    if args.random_qscaler_layers is not None and not args.random_init:
        p.error("--random-qscaler-layers needs --random-init (a trained checkpoint keeps its own QScaler)")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    env = environment()
    print(
        f"environment: torch {env['packages']['torch']}, transformers {env['packages']['transformers']}, "
        f"fvcore {env['packages']['fvcore']}, python {env['python']}, threads {env['torch_num_threads']} "
        f"(interop {env['torch_num_interop_threads']}), "
        f"{env['cpu_count']} CPUs, load average {' '.join(f'{x:.2f}' for x in env['loadavg_start'])}"
    )

    if env["loadavg_start"][0] > (env["cpu_count"] or 1) and args.threads > 1:
        print(
            f"  WARNING: load average {env['loadavg_start'][0]:.1f} > {env['cpu_count']} CPUs: with {args.threads} "
            "threads, small ops wait on descheduled OpenMP threads and timings are dominated by that; "
            "compare with --threads 1"
        )
    workdir = None
    if args.random_init:
        dm, _ = datamodule(args.cache_dir, {"n_train": 16, "n_val": 4, "n_test": args.random_n_test, "image_size": 32})
        workdir = tempfile.TemporaryDirectory(prefix="bench_idq_")
        blip2, ours, ckpts = build_random(
            args.random_size, dm.vocabulary_texts(), Path(workdir.name), args.random_length, args.random_qscaler_layers
        )
    else:
        ours_dir = (
            Path(args.ours_checkpoint)
            if args.ours_checkpoint
            else default_ours_checkpoint(args.cache_dir, args.train, args.train_threads)
        )
        blip2, ours, ckpts = load_trained(args.cache_dir, args.blip2_checkpoint, ours_dir)
        dm, _ = datamodule(args.cache_dir, None)
    torch.set_num_threads(args.threads)  # training may have changed it
    if blip2.vision_tower.fingerprint() != ours.vision_tower.fingerprint():
        print("  WARNING: the two models have different vision towers")
    es = dm.eval_set()
    texts = list(es.instructions)
    complexity = np.asarray(es.complexity)
    rng = np.random.default_rng(args.seed)

    with torch.no_grad():
        # -- lengths on the real test instructions ------------------------------------------
        L = torch.cat([ours.text_lengths(texts[s : s + 512]).cpu() for s in range(0, len(texts), 512)]).numpy()
        tok = blip2.tokenizer(texts, truncation=True, max_length=blip2.config.text_length)["input_ids"]
        T = np.array([len(x) for x in tok])
        per_level = {int(c): float(L[complexity == c].mean()) for c in np.unique(complexity)}
        nq = blip2.head.query_tokens.shape[1]
        print(
            f"test set: {es.n_images} gallery images, {len(texts)} instructions; instruction tokens T "
            f"mean {T.mean():.1f} (min {T.min()}, max {T.max()})"
        )
        print(
            f"ours' L on the test instructions: mean {L.mean():.2f} (std {L.std():.2f}, min {L.min()}, max "
            f"{L.max()}); by complexity level: "
            + ", ".join(f"{c}: {v:.2f}" for c, v in per_level.items())
            + f"; blip2: {nq}; gallery length (ours): {ours.gallery_length}"
        )

        gallery = gallery_tokens(blip2, dm, args.cache_dir)
        tokens1 = gallery[:1]
        ids_base = torch.tensor([tok[int(np.argmax(T))]])
        qs_tok = ours.qscaler.encoder.tokenize(texts)
        Tq = np.array([len(x) for x in qs_tok["input_ids"]])
        qs_ids_base = torch.tensor([qs_tok["input_ids"][int(np.argmax(Tq))]])

    # -- FLOPs ----------------------------------------------------------------------------
    t = time.perf_counter()
    fl = instruction_flops(blip2, ours, tokens1, ids_base, L, T, args.fallback_sample, args.seed, qs_ids_base, Tq)
    b_f, o_f, q_f = fl["blip2"] / GIGA, fl["ours"] / GIGA, fl["qscaler"] / GIGA
    lvl = complexity[fl["index"]]
    by_level = {
        int(c): {
            "L": float(L[fl["index"]][lvl == c].mean()),
            "ours_gflops": float(o_f[lvl == c].mean()),
            "blip2_gflops": float(b_f[lvl == c].mean()),
        }
        for c in np.unique(lvl)
    }
    print(
        f"instruction-path FLOPs over {len(fl['index'])} test instructions ({fl['traces']} fvcore traces, "
        f"exact polynomial: {fl['exact_polynomial']}, {time.perf_counter() - t:.1f} s):"
    )
    print(
        f"  blip2 (32 queries): mean {b_f.mean():.5f} G (std {b_f.std():.5f}); ours at its L: mean "
        f"{o_f.mean():.5f} G (std {o_f.std():.5f}, min {o_f.min():.5f}, max {o_f.max():.5f}); "
        f"QScaler: mean {q_f.mean():.5f} G"
    )
    print(
        "  by complexity level (mean L, ours G, blip2 G): "
        + "; ".join(f"{c}: {v['L']:.1f}, {v['ours_gflops']:.5f}, {v['blip2_gflops']:.5f}" for c, v in by_level.items())
    )
    print(
        f"  ours at T={fl['median_T']} by L: "
        + ", ".join(f"L={k}: {v:.5f}" for k, v in fl["ours_gflops_by_L_at_median_T"].items())
        + f" (blip2 at 32: {fl['blip2_gflops_at_median_T']:.5f})"
    )
    with torch.no_grad():
        idx_b = flops(
            lambda x: blip2.head.image_feats(blip2.head.query_outputs(blip2.head.query_tokens, x)), [blip2], (tokens1,)
        )
        idx_o = flops(lambda x: ours.head.image_feats(ours.query_outputs(x)), [ours], (tokens1,))
        size = blip2.image_transform().crop
        tower = flops(lambda px: blip2.vision_tower(px), [blip2.vision_tower], (torch.randn(1, 3, size, size),))
    print(f"  vision tower (shared, frozen, run once per image by both): {tower / GIGA:.5f} G/image")

    # -- wall time ------------------------------------------------------------------------
    sel = rng.choice(len(texts), size=min(args.n_instructions, len(texts)), replace=False)
    src = np.asarray(es.source)
    pairs = []
    with torch.no_grad():
        for i in sel:
            ids, mask = blip2.tokenize([texts[i]])
            pairs.append((gallery[int(src[i]) % len(gallery)][None], ids, mask, torch.tensor([int(L[i])]), texts[i]))

    def itm_b():
        for x, ids, mask, _, _ in pairs:
            blip2.itm_scores(x, ids, mask)

    def itm_o():
        for x, ids, mask, n, _ in pairs:
            ours.itm_scores(x, ids, mask, n)

    def e2e_b():
        for x, _, _, _, text in pairs:
            ids, mask = blip2.tokenize([text])
            blip2.itm_scores(x, ids, mask)

    def e2e_o():
        for x, _, _, _, text in pairs:
            ids, mask = ours.tokenize([text])
            ours.itm_scores(x, ids, mask, ours.text_lengths([text]))

    # re-ranking runs the instruction path on one instruction and its top k images at once:
    # tokenization and (ours) the QScaler once per instruction, the Q-Former on k pairs
    k = args.topk
    topk = [
        (gallery[torch.from_numpy(rng.choice(len(gallery), size=k, replace=len(gallery) < k))], text)
        for _, _, _, _, text in pairs
    ]

    def topk_b():
        for x, text in topk:
            ids, mask = blip2.tokenize([text])
            blip2.itm_scores(x, ids.expand(k, -1), mask.expand(k, -1))

    def topk_o():
        for x, text in topk:
            ids, mask = ours.tokenize([text])
            ours.itm_scores(x, ids.expand(k, -1), mask.expand(k, -1), ours.text_lengths([text]).expand(k))

    kw = dict(rounds=args.rounds, warmup=args.warmup, runs=args.runs, min_time_s=args.min_time)
    t = time.perf_counter()
    w_itm = timed({"blip2": itm_b, "ours": itm_o}, len(pairs), **kw)
    w_e2e = timed({"blip2": e2e_b, "ours": e2e_o}, len(pairs), **kw)
    w_topk = timed({"blip2": topk_b, "ours": topk_o}, len(topk) * k, **kw)
    print(
        f"instruction path timed on {len(pairs)} test pairs at batch 1 and on {len(topk)} instructions x {k} "
        f"images ({time.perf_counter() - t:.1f} s)"
    )
    extra = {n: w_e2e[n]["ms"] - w_itm[n]["ms"] for n in ("blip2", "ours")}
    print(
        f"  batch 1, end to end minus the ITM pass: blip2 {extra['blip2']:.3f} ms (tokenizer), ours "
        f"{extra['ours']:.3f} ms (tokenizer and QScaler)"
    )

    t = time.perf_counter()
    with torch.no_grad():
        enc = {}
        for name, m in (("blip2", blip2), ("ours", ours)):
            enc[name] = m.encode_images(gallery)
    qsel = [texts[i] for i in rng.choice(len(texts), size=min(args.n_queries, len(texts)), replace=False)]
    w_rr = timed(
        {n: (lambda m=m, g=enc[n]: m.score(m.encode_texts(qsel), g)) for n, m in (("blip2", blip2), ("ours", ours))},
        len(qsel),
        **kw,
    )
    w_itc = timed(
        {
            n: (lambda m=m, g=enc[n]: m.itc_score(m.encode_texts(qsel), g))
            for n, m in (("blip2", blip2), ("ours", ours))
        },
        len(qsel),
        **kw,
    )
    print(
        f"query time: {len(qsel)} test queries vs {len(gallery)} encoded gallery images, k_test "
        f"blip2 {blip2.config.k} / ours {ours.config.k} ({time.perf_counter() - t:.1f} s)"
    )

    t = time.perf_counter()
    batch = gallery[: args.index_batch]
    w_idx = timed(
        {n: (lambda m=m: m.encode_images(batch)) for n, m in (("blip2", blip2), ("ours", ours))}, len(batch), **kw
    )
    emb_bytes = {n: e.emb[0].numel() * e.emb.element_size() for n, e in enc.items()}
    tok_bytes = {n: e.extra["image_tokens"][0].numel() * e.extra["image_tokens"].element_size() for n, e in enc.items()}
    print(
        f"indexing timed at batch {len(batch)} ({time.perf_counter() - t:.1f} s); query embeddings per image: "
        f"blip2 {tuple(enc['blip2'].emb.shape[1:])}, ours {tuple(enc['ours'].emb.shape[1:])} "
        f"({enc['ours'].emb.dtype}); vision tokens {tuple(enc['ours'].extra['image_tokens'].shape[1:])}"
    )

    metrics = {
        "instr_qformer_gflops": metric(b_f.mean(), o_f.mean(), "instr_qformer_gflops"),
        "instr_total_gflops": metric(b_f.mean(), (o_f + q_f).mean(), "instr_total_gflops"),
        "instr_itm_ms": metric(w_itm["blip2"]["ms"], w_itm["ours"]["ms"], "instr_itm_ms"),
        "instr_e2e_ms": metric(w_e2e["blip2"]["ms"], w_e2e["ours"]["ms"], "instr_e2e_ms"),
        "instr_topk_ms": metric(w_topk["blip2"]["ms"], w_topk["ours"]["ms"], "instr_topk_ms"),
        "query_rerank_ms": metric(w_rr["blip2"]["ms"], w_rr["ours"]["ms"], "query_rerank_ms"),
        "query_itc_ms": metric(w_itc["blip2"]["ms"], w_itc["ours"]["ms"], "query_itc_ms"),
        "index_qformer_gflops": metric(idx_b / GIGA, idx_o / GIGA, "index_qformer_gflops"),
        "index_ms_per_image": metric(w_idx["blip2"]["ms"], w_idx["ours"]["ms"], "index_ms_per_image"),
        "index_emb_bytes": metric(emb_bytes["blip2"], emb_bytes["ours"], "index_emb_bytes"),
        "index_total_bytes": metric(
            emb_bytes["blip2"] + tok_bytes["blip2"], emb_bytes["ours"] + tok_bytes["ours"], "index_total_bytes"
        ),
        "queries_per_instruction": metric(nq, float(L.mean()), "queries_per_instruction"),
    }
    env["loadavg_end"] = list(os.getloadavg())
    print()
    print(table(metrics))
    print(
        f"ratio = ours / blip2. GFLOPs = fvcore multiply-adds. Load average at the end: "
        f"{' '.join(f'{x:.2f}' for x in env['loadavg_end'])}; {time.perf_counter() - t_start:.0f} s in all."
    )

    result = {
        "environment": env,
        "checkpoints": ckpts,
        "settings": {k: v for k, v in vars(args).items()},
        "test_set": {"n_images": es.n_images, "n_instructions": len(texts)},
        "lengths": {
            "ours": _stats(L.astype(float)),
            "ours_by_complexity": per_level,
            "blip2": nq,
            "ours_gallery_length": ours.gallery_length,
            "instruction_tokens": _stats(T.astype(float)),
        },
        "flops": {
            "instruction_blip2_gflops": _stats(b_f),
            "instruction_ours_gflops": _stats(o_f),
            "instruction_qscaler_gflops": _stats(q_f),
            "instruction_by_complexity": by_level,
            "n_instructions": len(fl["index"]),
            "exact_polynomial": fl["exact_polynomial"],
            "ours_gflops_by_L_at_median_T": fl["ours_gflops_by_L_at_median_T"],
            "blip2_gflops_at_median_T": fl["blip2_gflops_at_median_T"],
            "median_T": fl["median_T"],
            "vision_tower_gflops_per_image": tower / GIGA,
            "convention": "fvcore multiply-adds",
        },
        "wall": {
            "instr_itm": w_itm,
            "instr_e2e": w_e2e,
            "instr_topk": w_topk,
            "query_rerank": w_rr,
            "query_itc": w_itc,
            "index": w_idx,
        },
        "metrics": metrics,
        "seconds": time.perf_counter() - t_start,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=float))
        print(f"wrote {args.out}")
    if workdir is not None:
        workdir.cleanup()
    return result


if __name__ == "__main__":
    main()
