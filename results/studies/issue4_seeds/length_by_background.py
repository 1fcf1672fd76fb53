"""Probe (issue 4): how much of Spearman(complexity level, L) comes from captions that name a
background, and does L follow how many test images a caption matches?

Reads the per-query query lengths stored in `bench run --model ours` result files (no checkpoint
needed) and the SynthScenes test split in DATA_ROOT (generated there with the default data options
if missing; each file's annotation hash must match it; the run seed only picks the instruction
templates, the captions are the same).

Usage (from the repository root, with the suite's venv):
    python results/studies/issue4_seeds/length_by_background.py DATA_ROOT RESULT.json [RESULT.json ...]

Per file it prints:
  * Spearman(level, L) over all test instructions, over those whose caption names no background
    and over those that name one; Spearman(names a background, L);
  * per level: the share of captions that name a background, and mean L with / without one;
  * Spearman(L, -log n_relevant), n_relevant = the test images the caption matches (its
    specificity), and the same Spearman of the level itself (what a length that followed
    specificity exactly would score against the level).
"""

import json
import sys

import numpy as np

from benchmark.metrics.qlen import spearman
from study_data import test_split


def split_facts(root: str, seed: int):
    """(annotation hash, level, names a background, n_relevant) per test caption."""
    es = test_split(root, seed)
    names_background = np.array(["background" in c for c in es.captions])
    return es.annotations_sha256, np.asarray(es.complexity), names_background, es.relevance["t2i"].counts()


def report(path: str, root: str) -> None:
    result = json.load(open(path))
    sha, level, bg, n_relevant = split_facts(root, int(result["seed"]))
    length = np.asarray(result["per_query"]["text_lengths"], dtype=float)
    if result["provenance"]["annotations_sha256"] != sha:
        raise SystemExit(f"{path}: provenance.annotations_sha256 is not the test split in {root} (other data options?)")
    print(f"{path} (seed {result['seed']})")
    print(f"  Spearman(level, L): all {spearman(level, length):.3f}, no background named "
          f"{spearman(level[~bg], length[~bg]):.3f}, background named {spearman(level[bg], length[bg]):.3f}; "
          f"Spearman(names a background, L) {spearman(bg.astype(float), length):.3f}")
    cells = []
    for k in np.unique(level):
        at = level == k
        with_bg = f"{length[at & bg].mean():.1f}" if (at & bg).any() else "-"
        without = f"{length[at & ~bg].mean():.1f}" if (at & ~bg).any() else "-"
        cells.append(f"{k}: {bg[at].mean():.2f}, {with_bg} / {without}")
    print("  level: share naming a background, mean L with / without one -- " + "; ".join(cells))
    specificity = -np.log(n_relevant)
    print(f"  Spearman(L, -log n_relevant) {spearman(specificity, length):.3f}; "
          f"Spearman(level, -log n_relevant) {spearman(level, specificity):.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    for file in sys.argv[2:]:
        report(file, sys.argv[1])
