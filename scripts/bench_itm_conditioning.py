"""Query time of ours with the instruction-conditioned ITM pass against BLIP-2's plain ITM pass
(``model_args.itm_conditioning``), side by side on the same trained weights.

What the conditioning ablation (``bench ablate conditioning``) adds to ``bench reproduce`` is
one more evaluation of ours' cached checkpoint whose re-ranking runs the plain pass: this times
that difference. The test gallery is encoded once; then ``--queries`` test instructions are
encoded and scored against it as the evaluation does (``model.score``: ITC first stage, the top
``k_test`` re-ranked by ITM), once per setting, the two settings alternating over ``--rounds``
(ABAB... then BABA..., so background load hits both alike); printed: the median per query of
each and their ratio. The ITC first stage is the same in both (checked).

Usage: ``python scripts/bench_itm_conditioning.py --cache-dir $INSTRUCTSEE_CACHE`` (the tiny
ours checkpoint of the shipped config must be cached: ``bench run --model ours`` first).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmark.config import build_run_config, model_defaults
from benchmark.store import ensure_checkpoint, resolve_run
from lightning_modules.idq_former import IdqFormerRetrieval


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--queries", type=int, default=250, help="test instructions per timed call (1-5000)")
    p.add_argument("--rounds", type=int, default=4, help="timed calls per setting (2-50)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if not 1 <= args.queries <= 5000 or not 2 <= args.rounds <= 50 or args.threads < 1:
        p.error("--queries must be in 1..5000, --rounds in 2..50, --threads >= 1")
    return args


@torch.no_grad()
def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = build_run_config(model_defaults("ours"), {"model": "ours", "cache_dir": args.cache_dir})
    ckpt, _ = ensure_checkpoint(cfg, train=False)
    dm = resolve_run(cfg).dm
    dm.prepare_data()
    model = IdqFormerRetrieval.load_checkpoint(ckpt).eval()
    dm.set_transform(model.image_transform())
    dm.set_item_loader(model.item_loader(Path(args.cache_dir) / "features"))
    tokens = torch.cat([model.vision_tokens(items) for _, items in dm.gallery_dataloader()])
    gallery = model.encode_images(tokens)
    texts = list(dm.eval_set().instructions)[: args.queries]
    configs = {
        "conditioned": dataclasses.replace(model.config, itm_conditioning=True),
        "plain": dataclasses.replace(model.config, itm_conditioning=False),
    }
    times: dict[str, list[float]] = {n: [] for n in configs}
    scores: dict[str, torch.Tensor] = {}
    for r in range(args.rounds):
        for name in configs if r % 2 == 0 else list(configs)[::-1]:
            model.config = configs[name]
            t = time.perf_counter()
            scores[name] = model.score(model.encode_texts(texts), gallery)
            times[name].append(time.perf_counter() - t)
    k = model.config.k
    itc = model.itc_score(model.encode_texts(texts), gallery)
    for name, s in scores.items():  # beyond each row's top k the first-stage order is kept
        top = s.topk(k, dim=1).indices
        assert torch.equal(top.sort(1).values, itc.topk(k, dim=1).indices.sort(1).values), name
    ms = {n: 1e3 * statistics.median(v) / len(texts) for n, v in times.items()}
    print(
        f"{len(texts)} queries x {len(tokens)} gallery images, k_test {k}, {args.threads} threads, "
        f"{args.rounds} rounds per setting (alternating)"
    )
    for name, v in times.items():
        print(f"  {name:<12} {ms[name]:.2f} ms/query (median; rounds: {', '.join(f'{x:.2f}' for x in v)} s)")
    ratio = ms["plain"] / ms["conditioned"]
    print(f"  plain / conditioned = {ratio:.2f}")
    return {"ms_per_query": ms, "ratio": ratio, "rounds_s": times, "queries": len(texts), "k_test": k}


if __name__ == "__main__":
    main()
