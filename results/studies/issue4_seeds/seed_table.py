"""Seed table (issue 4): Spearman(complexity, L), mean L and t2i/R@5 of `--model ours` runs, per seed
and per arm, with each arm's paired difference from the first arm.

Reads only the result files (no checkpoint, no data). Each ARM is NAME=PATTERN, PATTERN a result file
path with ``{seed}`` where the seed goes; seeds without a file are left out of that arm.

Usage (from the repository root):
    python results/studies/issue4_seeds/seed_table.py [--seeds 0-9] NAME=PATTERN [NAME=PATTERN ...]
e.g. the default against `length_grad_from=t2i` over ten seeds:
    python results/studies/issue4_seeds/seed_table.py \\
        default=results/studies/issue4_seeds/ours__synthetic__lean{seed}.json \\
        t2i=results/studies/issue4_seeds/ours__synthetic__lgt2i_{seed}.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

TARGET = 0.5  # the Spearman(complexity, L)


def seeds(spec: str) -> list[int]:
    """``"0-9"`` or ``"0,3,5"``."""
    if "-" in spec:
        lo, hi = spec.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in spec.split(",")]


def arm(spec: str) -> tuple[str, str]:
    name, sep, pattern = spec.partition("=")
    if not sep or "{seed}" not in pattern:
        raise SystemExit(f"arm {spec!r}: expected NAME=PATTERN with {{seed}} in PATTERN")
    return name, pattern


def load(pattern: str, seed_list: list[int]) -> dict[int, dict]:
    out = {}
    for s in seed_list:
        path = Path(pattern.format(seed=s))
        if path.is_file():
            m = json.loads(path.read_text())["metrics"]
            out[s] = {"spearman": m["qlen/spearman_complexity"], "mean_l": m["qlen/mean"], "r5": m["t2i/R@5"]}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("arms", nargs="+", type=arm)
    args = ap.parse_args(argv)
    seed_list = seeds(args.seeds)
    runs = {name: load(pattern, seed_list) for name, pattern in args.arms}
    first = args.arms[0][0]
    print("seed  " + "".join(f"{name:>26}" for name in runs))
    print("      " + "".join(f"{'Spearman / mean L / R@5':>26}" for _ in runs))
    for s in seed_list:
        cells = [f"{r[s]['spearman']:.3f} / {r[s]['mean_l']:5.2f} / {r[s]['r5']:.4f}" if s in r else "-"
                 for r in runs.values()]
        print(f"{s:<6}" + "".join(f"{c:>26}" for c in cells))
    for name, r in runs.items():
        sp = [v["spearman"] for v in r.values()]
        if not sp:
            print(f"{name}: no files")
            continue
        line = (f"{name}: {len(sp)} seeds, Spearman mean {statistics.mean(sp):.3f}, range {min(sp):.3f}-{max(sp):.3f}, "
                f">= {TARGET} at {sum(v >= TARGET for v in sp)}; mean L {min(v['mean_l'] for v in r.values()):.2f}-"
                f"{max(v['mean_l'] for v in r.values()):.2f}; t2i/R@5 mean {statistics.mean(v['r5'] for v in r.values()):.4f}")
        common = sorted(set(r) & set(runs[first]))
        if name != first and len(common) > 1:
            d = [r[s]["spearman"] - runs[first][s]["spearman"] for s in common]
            sd = statistics.stdev(d)
            t = statistics.mean(d) / sd * math.sqrt(len(d)) if sd > 0 else float("nan")
            line += f"; paired vs {first} over {len(d)} seeds {statistics.mean(d):+.3f} (sd {sd:.3f}, t {t:.2f})"
        print(line)


if __name__ == "__main__":
    main()
