"""Does ITM re-ranking beat the ITC first stage? Paired bootstrap over queries, per model and seed.

Issue 28 item 1. Each result file of a BLIP2-family run (``bench run --model blip2|ours``)
holds, per query, the rank of the first relevant item after re-ranking (``t2i/rank``) and
in the ITC-only order (``itc/t2i/rank``): the two orders of the *same* queries, so the
difference of R@K (1 if that rank <= K) is paired per query. For every file this script
prints R@1, R@5, R@10 re-ranked and ITC-only, and the paired bootstrap interval of
``R@K(re-ranked) - R@K(ITC)`` (``benchmark/reporting/bootstrap.py``: 1000 resamples,
95 %), then per model how many seeds have the R@1 interval above 0.

Two ways to use it:

* ``--results FILE ...``: read existing result files (e.g. ``results/reference/*``);
* ``--run --seeds 0 1 2 3 4 [--set KEY=VALUE ...]``: run ``bench run`` for each model and
  seed first (tag ``itm-seed<S>``, results in ``--results-dir``; cached checkpoints are
  reused, the CLIP and BLIP2 each model depends on are trained per seed), then read them.
  ``--set`` is passed to every run (e.g. ``model_args.k_test=16``).

``--json PATH`` writes every figure (atomically). Nothing here is timed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.config import from_dict  # noqa: E402
from benchmark.registry import MODELS  # noqa: E402
from benchmark.reporting.bootstrap import paired_difference  # noqa: E402
from benchmark.results import atomic_write_json, load_result  # noqa: E402

KS = (1, 5, 10)


def recall(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per query 1.0 if the first relevant item ranks within ``k`` (1-based ranks), else 0.0;
    NaN for a query without relevant items (rank <= 0)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = (ranks <= k).astype(np.float64)
    out[~(ranks > 0)] = np.nan
    return out


def study(path: Path, direction: str = "t2i", n_boot: int = 1000) -> dict:
    """Re-ranked vs ITC-only R@K of one result file, with paired bootstrap intervals."""
    result = load_result(path)
    pq = result["per_query"]
    rr, itc = np.asarray(pq[f"{direction}/rank"]), np.asarray(pq[f"itc/{direction}/rank"])
    row = {
        "file": str(path),
        "model": result["model"],
        "seed": result["seed"],
        "k_test": from_dict(MODELS.get(result["model"]).Config, result["model_config"], "model_config").k,
        "direction": direction,
        "n": len(rr),
    }
    for k in KS:
        a, b = recall(rr, k), recall(itc, k)
        d = paired_difference(a, b, n_boot=n_boot, seed=0)
        row[f"R@{k}"] = float(np.nanmean(a))
        row[f"itc/R@{k}"] = float(np.nanmean(b))
        row[f"diff/R@{k}"] = {"diff": d.diff, "lo": d.lo, "hi": d.hi, "p": d.p_value}
    timings = result.get("timings", {})
    row["score_and_rank_s"] = timings.get("score_and_rank_s")
    row["train_s"] = timings.get("train_s")
    return row


def run_seeds(models: list[str], seeds: list[int], sets: list[str], results_dir: Path) -> list[Path]:
    """``bench run`` per model and seed (the runner's cache makes reruns cheap); the result paths."""
    paths = []
    for seed in seeds:
        for model in models:
            tag = f"itm-seed{seed}"
            cmd = [sys.executable, "-m", "benchmark.cli", "run", "--model", model, "--seed", str(seed), "--tag", tag]
            cmd += ["--results-dir", str(results_dir), "--set", "eval.measure=false"]
            for s in sets:
                cmd += ["--set", s]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
            paths.append(results_dir / f"{model}__synthetic__{tag}.json")
    return paths


def table(rows: list[dict]) -> str:
    head = "| model | seed | k_test | R@1 re-ranked / ITC | diff R@1 [95% CI] | R@5 re-ranked / ITC | diff R@5 [95% CI] | R@10 re-ranked / ITC |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:

        def cell(k: int, r: dict = r) -> str:
            d = r[f"diff/R@{k}"]
            return f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"

        lines.append(
            f"| {r['model']} | {r['seed']} | {r['k_test']} | {r['R@1']:.4f} / {r['itc/R@1']:.4f} | {cell(1)} "
            f"| {r['R@5']:.4f} / {r['itc/R@5']:.4f} | {cell(5)} | {r['R@10']:.4f} / {r['itc/R@10']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", nargs="*", type=Path, default=[], help="result files to read")
    ap.add_argument("--run", action="store_true", help="run bench run per model and seed first")
    ap.add_argument("--models", nargs="+", default=["blip2", "ours"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE passed to every run")
    ap.add_argument("--results-dir", type=Path, default=Path("results/itm-study"))
    ap.add_argument("--direction", default="t2i", choices=["t2i", "i2t"])
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    paths = list(args.results)
    if args.run:
        paths += run_seeds(args.models, args.seeds, args.sets, args.results_dir)
    if not paths:
        ap.error("give --results FILE ... or --run")
    rows = [study(p, args.direction, args.n_boot) for p in paths]
    print(table(rows))
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        above = sum(r["diff/R@1"]["lo"] > 0 for r in mine)
        print(f"{model}: re-ranked R@1 above ITC (95% interval above 0) at {above} of {len(mine)} seeds")
    if args.json:
        atomic_write_json(args.json, {"direction": args.direction, "rows": rows})


if __name__ == "__main__":
    main()
