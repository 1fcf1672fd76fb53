"""Probe (issue 4): how many query outputs does an `--model ours` checkpoint need to find the
images of a caption, for captions that name a background and for those that do not?

Every test instruction is scored against the test gallery with the same fixed number L of query
outputs (ITC only: max over the first L outputs of each image, no ITM re-ranking), for several L.
Printed per group (captions that name a background and captions that do not, each by complexity
level): t2i R@5 (any relevant image in the top 5), MRR (ties counted against the model), and the
share of (caption, image) scores that the outputs beyond L would still raise.

Usage (from the repository root, with the suite's venv):
    python results/studies/issue4_seeds/prefix_recall.py CHECKPOINT DATA_ROOT [SEED]
e.g. CHECKPOINT = <cache>/checkpoints/ours__synthetic__tiny__<hash>, DATA_ROOT = <cache>/data.
"""

import sys

import numpy as np
import torch

from datamodules.base import load_image
from lightning_modules.base import Encoded
from lightning_modules.components.dynamic_length import length_limited_max_sim
from study_data import checkpoint_and_split

LENGTHS = (2, 4, 6, 8, 10, 16, 24, 32, 48)


def main(checkpoint: str, root: str, seed: int = 0) -> None:
    model, es = checkpoint_and_split(checkpoint, root, seed)
    transform = model.image_transform()
    with torch.no_grad():
        gallery = torch.cat([
            model.encode_images(torch.stack([transform(load_image(p)) for p in es.image_paths[i:i + 100]])).emb
            for i in range(0, es.n_images, 100)])
        texts = torch.cat([model.encode_texts(list(es.instructions[i:i + 500])).emb
                           for i in range(0, es.n_queries, 500)])
    rel = es.relevance["t2i"]
    relevant = np.zeros((es.n_queries, es.n_images), dtype=bool)
    for q in range(es.n_queries):
        relevant[q, rel.row(q)] = True
    level = np.asarray(es.complexity)
    bg = np.array(["background" in c for c in es.captions])
    print(f"{checkpoint}: t2i R@5 and MRR (ITC, no re-ranking) with the first L query outputs for every caption")
    header = "".join(f"{f'L={n}':>8}" for n in LENGTHS)
    hits, reciprocal, changed = {}, {}, {}
    with torch.no_grad():
        full = length_limited_max_sim(Encoded(texts, torch.full((len(texts),), max(LENGTHS))), Encoded(gallery)).numpy()
    for n in LENGTHS:
        with torch.no_grad():
            scores = length_limited_max_sim(Encoded(texts, torch.full((len(texts),), n)), Encoded(gallery)).numpy()
        changed[n] = (scores < full).mean(1)  # per caption: share of images whose score a later output raises
        best = np.where(relevant, scores, -np.inf).max(1)
        rank = 1 + (np.where(relevant, -np.inf, scores) >= best[:, None]).sum(1)  # ties count against
        hits[n], reciprocal[n] = rank <= 5, 1.0 / rank
    groups = [("all", np.ones_like(bg))]
    for name, mask in (("no background", ~bg), ("background", bg)):
        groups.append((name, mask))
        groups += [(f"  level {k}", mask & (level == k)) for k in np.unique(level) if (mask & (level == k)).any()]
    for label, values in (("R@5", hits), ("MRR", reciprocal), (f"share of scores below L={max(LENGTHS)}'s", changed)):
        print(f"{label}: {'group':<19}{'n':>6}{header}")
        for name, mask in groups:
            print(f"{name:<24}{int(mask.sum()):>6}" + "".join(f"{values[n][mask].mean():>8.3f}" for n in LENGTHS))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
