"""Peak memory of ``bench feedback``'s image-image path at a large gallery, against the
dense gallery x gallery matrix it replaces (:mod:`benchmark.feedback.memcheck`).

    python scripts/feedback_memory.py --gallery 50000 --dim 64 --top-k 16 --row-chunk 256

Each step runs in a fresh process; the script prints its peak RSS, the extra over that
process's own peak just before the step (imports and gallery), the bound the tests
enforce and the dense matrix's size. Not a timing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmark.feedback.memcheck import STEPS, bound_mb, dense_mb
from benchmark.measure.memory import peak_rss_mb_in_fresh_process


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gallery", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--row-chunk", type=int, default=256)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--display", type=int, default=5)
    a = ap.parse_args()
    kw = {
        "n_gallery": a.gallery,
        "dim": a.dim,
        "top_k": a.top_k,
        "row_chunk": a.row_chunk,
        "n_queries": a.queries,
        "display": a.display,
    }
    peaks, baselines = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in STEPS[1:]:
            out = Path(tmp) / f"{s}.json"
            peaks[s] = peak_rss_mb_in_fresh_process("benchmark.feedback.memcheck:probe", step=s, out=str(out), **kw)
            baselines[s] = json.loads(out.read_text())["baseline_mb"]
    print(
        f"G={a.gallery} dim={a.dim} top_k={a.top_k} row_chunk={a.row_chunk} queries={a.queries} "
        f"display={a.display}; dense G x G float32 = {dense_mb(a.gallery):.0f} MiB"
    )
    for s in STEPS[1:]:
        extra = peaks[s] - baselines[s]
        bound = bound_mb(s, a.gallery, a.top_k, a.row_chunk, a.queries, a.display)
        print(
            f"  {s:<6} peak RSS {peaks[s]:8.1f} MiB  (before the step {baselines[s]:7.1f})  "
            f"extra {extra:7.1f} MiB  bound {bound:7.1f} MiB  "
            f"dense/extra {dense_mb(a.gallery) / max(extra, 1e-9):8.1f}x"
        )


if __name__ == "__main__":
    main()
