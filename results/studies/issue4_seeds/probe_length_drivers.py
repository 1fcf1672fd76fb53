"""Probe (issue 4): what drives the query length L that a trained `--model ours` checkpoint gives
the SynthScenes test instructions -- the complexity level, or the words of the caption?

Usage (from the repository root, with the suite's venv):
    python results/studies/issue4_seeds/probe_length_drivers.py CHECKPOINT DATA_ROOT [SEED]
e.g. CHECKPOINT = <cache>/checkpoints/ours__synthetic__tiny__<hash>, DATA_ROOT = <cache>/data, SEED = the
run's seed (it draws the test split's instruction templates; default 0).

Prints the Spearman of L with the level, L per level with its spread and the captions with the
shortest and longest L, and the share of the variance of L explained (R^2 of the group means)
by the level, by the first colour word, by the background word and by colour x background.
"""

import re
import sys
from collections import defaultdict

import numpy as np
import torch
from scipy.stats import spearmanr

from study_data import checkpoint_and_split

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "pink", "cyan", "brown")


def first_colour(text: str) -> str:
    return next((w for w in re.findall(r"[a-z]+", text.lower()) if w in COLOURS), "-")


def background(text: str) -> str:
    m = re.search(r"(\w+) background", text.lower())
    return m.group(1) if m else "-"


def r2(values: np.ndarray, groups: np.ndarray) -> float:
    """Share of the variance of ``values`` explained by the means of ``groups``."""
    total = ((values - values.mean()) ** 2).sum()
    within = sum(((values[groups == k] - values[groups == k].mean()) ** 2).sum() for k in set(groups))
    return float(1 - within / total)


def main(checkpoint: str, root: str, seed: int = 0) -> None:
    model, es = checkpoint_and_split(checkpoint, root, seed)
    texts = list(es.instructions)
    with torch.no_grad():
        r = torch.cat([model.qscaler(texts[i:i + 500]).r.float() for i in range(0, len(texts), 500)])
    length = model.length.hard_length(r).numpy().astype(float)
    level = np.asarray(es.complexity)
    print(f"Spearman(level, L) {spearmanr(level, length)[0]:.3f}; mean L {length.mean():.2f}")
    for k in sorted(set(level)):
        idx = np.where(level == k)[0]
        order = idx[np.argsort(length[idx], kind="stable")]
        print(f"level {k}: mean L {length[idx].mean():.2f}, std {length[idx].std():.2f}")
        for j in [*order[:2], *order[-2:]]:
            print(f"    L={int(length[j]):2d}  {texts[j]}")
    colour = np.array([first_colour(t) for t in texts])
    bg = np.array([background(t) for t in texts])
    by_colour = defaultdict(list)
    for c, n in zip(colour, length):
        by_colour[c].append(n)
    print("mean L by first colour:", {c: round(float(np.mean(v)), 2) for c, v in sorted(by_colour.items())})
    print(f"R^2 of L: level {r2(length, level.astype(str)):.3f}, first colour {r2(length, colour):.3f}, "
          f"background {r2(length, bg):.3f}, colour x background {r2(length, np.char.add(colour, bg)):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
