"""The report's figures (matplotlib, Agg canvas, PNG and PDF, written atomically).

* ``qlen_by_complexity``: mean query length per caption complexity level, one line per run
  with per-level lengths (error bars: the bootstrap interval of each level's mean when the
  run has per-query lengths);
* ``r5_vs_gflops``: R@5 against GFLOPs (gallery + query side, ours' gallery pass at L_max:
  :mod:`benchmark.reporting.cost_split`) of every run, one panel per dataset, the Pareto front
  (higher R@5, fewer GFLOPs) marked;
* ``throughput_vs_qlen``: throughput against mean query length of every run with both.

A figure whose data no run holds is skipped with a logged note, and a figure that fails is
skipped with its error: the report never crashes on a plot.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmark.atomic import atomic_write_bytes
from benchmark.reporting.bootstrap import mean_interval
from benchmark.reporting.estimates import Cell, Estimator
from benchmark.reporting.pareto import pareto_front
from benchmark.reporting.per_query import query_values
from benchmark.reporting.selection import run_order

log = logging.getLogger(__name__)
FORMATS = ("png", "pdf")


class Skip(Exception):
    """A figure without data: the message says what is missing."""


@dataclass
class FigureOutcome:
    name: str
    paths: list[Path] = field(default_factory=list)
    skipped: str | None = None


def _label(r: dict) -> str:
    return f"{r.get('model')}/{r.get('tag')} ({r.get('dataset')}, {r.get('size')})"


def new_figure(ncols: int = 1):
    fig = Figure(figsize=(5.0 * ncols, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _levels(r: dict, est: Estimator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(levels, mean L per level, [2, k] error-bar half-widths or None) of a run."""
    q = query_values(r, "t2i")
    if q is not None and q.get("qlen") is not None and q.complexity is not None:
        lengths, cx = q.columns["qlen"], q.complexity
        levels = np.unique(cx[~np.isnan(cx)])
        if len(levels) >= 2:
            o = est.options
            ivs = [mean_interval(lengths[cx == c], o.n_boot, o.seed, o.level) for c in levels]
            means = np.array([iv.value for iv in ivs])
            err = np.array([[iv.value - iv.lo for iv in ivs], [iv.hi - iv.value for iv in ivs]])
            return levels, means, err
    metrics = r.get("metrics") or {}
    pairs = sorted(
        (int(k.rsplit("_", 1)[1]), v)
        for k, v in metrics.items()
        if k.startswith("qlen/level_") and isinstance(v, (int, float))
    )
    if len(pairs) >= 2:
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=float), None
    return None


def qlen_by_complexity(results: list[dict], est: Estimator):
    series = [(r, s) for r in sorted(results, key=run_order) if (s := _levels(r, est)) is not None]
    if not series:
        raise Skip("no run has query lengths at two or more complexity levels")
    fig, (ax,) = new_figure()
    for r, (levels, means, err) in series:
        ax.errorbar(levels, means, yerr=err, marker="o", capsize=3, label=_label(r))
    ax.set_xlabel("caption complexity level")
    ax.set_ylabel("mean query length L")
    ax.set_xticks(sorted({int(x) for _, (lv, _, _) in series for x in lv}))
    ax.set_title("Query length by instruction complexity")
    ax.legend(fontsize="small")
    return fig


def _value_and_error(cell: Cell) -> tuple[float, tuple[float, float] | None]:
    """A present cell's value and its (minus, plus) error bar (None: no interval)."""
    assert cell.value is not None, "a missing cell has no point"  # callers skip missing cells
    if cell.lo is None:
        return cell.value, None
    assert cell.hi is not None, "an interval has both ends"
    return cell.value, (cell.value - cell.lo, cell.hi - cell.value)


def r5_vs_gflops(results: list[dict], est: Estimator):
    points: dict[str, list[tuple[dict, float, float, tuple[float, float] | None]]] = {}
    for r in sorted(results, key=run_order):
        c = est.cells(r)
        if not c["gflops"].missing and not c["r5"].missing:
            gflops, _ = _value_and_error(c["gflops"])
            r5, ci = _value_and_error(c["r5"])
            points.setdefault(str(r.get("dataset")), []).append((r, gflops, r5, ci))
    if not points:
        raise Skip("no run has both GFLOPs (gflops/...) and R@5")
    fig, axes = new_figure(len(points))
    for ax, (dataset, pts) in zip(axes, sorted(points.items()), strict=True):
        front = pareto_front([(g, q) for _, g, q, _ in pts])
        for i, (r, g, q, ci) in enumerate(pts):
            on = i in front
            ax.errorbar(
                [g],
                [q],
                yerr=None if ci is None else [[ci[0]], [ci[1]]],
                fmt="o",
                capsize=3,
                color="tab:red" if on else "tab:gray",
                mfc="tab:red" if on else "white",
            )
            ax.annotate(
                f"{r.get('model')}/{r.get('tag')}",
                (g, q),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize="x-small",
            )
        fx = [pts[i][1] for i in front]
        fy = [pts[i][2] for i in front]
        ax.step(fx, fy, where="post", color="tab:red", linewidth=1, label="Pareto front")
        ax.set_xlabel("GFLOPs: gallery + query side (fvcore multiply-adds)")
        ax.set_ylabel("T2I R@5")
        ax.set_title(f"R@5 vs GFLOPs: {dataset}")
        ax.legend(fontsize="small")
    return fig


def throughput_vs_qlen(results: list[dict], est: Estimator):
    pts = []
    for r in sorted(results, key=run_order):
        c = est.cells(r)
        if not c["thr"].missing and not c["qlen"].missing:
            qlen, xerr = _value_and_error(c["qlen"])
            thr, _ = _value_and_error(c["thr"])
            pts.append((r, qlen, thr, xerr))
    if not pts:
        raise Skip("no run has both a throughput (throughput_img_s) and a query length (qlen)")
    fig, (ax,) = new_figure()
    for r, x, y, xerr in pts:
        ax.errorbar([x], [y], xerr=None if xerr is None else [[xerr[0]], [xerr[1]]], fmt="o", capsize=3)
        ax.annotate(_label(r), (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xlabel("mean query length L")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title("Throughput vs query length")
    return fig


FIGURES: dict[str, Callable] = {
    "qlen_by_complexity": qlen_by_complexity,
    "r5_vs_gflops": r5_vs_gflops,
    "throughput_vs_qlen": throughput_vs_qlen,
}


def save_figure(fig, stem: Path) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        fig.savefig(buf, format=fmt, dpi=150, metadata=metadata)
        paths.append(atomic_write_bytes(stem.with_suffix(f".{fmt}"), buf.getvalue()))
    return paths


def render_figure(name: str, stem: Path, build: Callable[[], object]) -> FigureOutcome:
    """Build a figure and save it as PNG and PDF; a :class:`Skip` or any error becomes a
    skipped outcome with its reason: a plot never breaks the report."""
    try:
        return FigureOutcome(name, save_figure(build(), stem))
    except Skip as e:
        log.info("figure %s skipped: %s", name, e)
        return FigureOutcome(name, skipped=str(e))
    except Exception as e:  # a plot must never break the report
        log.warning("figure %s failed: %s", name, e, exc_info=True)
        return FigureOutcome(name, skipped=f"failed: {type(e).__name__}: {e}")


def write_figures(results: list[dict], estimator: Estimator, out_dir: Path) -> list[FigureOutcome]:
    return [
        render_figure(name, Path(out_dir) / name, functools.partial(plot, results, estimator))
        for name, plot in FIGURES.items()
    ]
