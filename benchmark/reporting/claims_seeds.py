"""Claims across seeds: each claim's verdict at every seed, and an interval across seeds.

The intervals of :mod:`benchmark.reporting.claims` are over the queries of one run, so they say
nothing about how the verdict moves with the training seed (at tiny size the query-length
result does: Spearman 0.33-0.61 over ten seeds). Given result files at several seeds (``bench
reproduce --seeds N``), every claim is evaluated on the files of each seed alone (the same
rules, the same per-query bootstrap), and per scope:

* the verdict at each seed;
* per effect of the verdict (:class:`~benchmark.reporting.claims.Effect`: the paired ΔR@5, rho,
  the throughput ratio, ...) the mean of the per-seed values over the n seeds that have it and
  the Student-t interval of that mean, ``mean ± t(n-1) · sd / sqrt(n)`` at the report's level
  (the seeds as independent draws of the training);
* the verdict across seeds: the claim's own rule applied to those intervals (every effect; two
  effects combine as the claim combines them: contradicted if either is, supported if both
  are). It needs at least two seeds with the effect; otherwise "not tested".

One seed gives no interval across seeds; the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from benchmark.reporting.claims import (
    CLAIMS,
    NOT_TESTED,
    Claim,
    Span,
    Verdict,
    both,
    seeds_of,
)
from benchmark.reporting.estimates import Estimator
from benchmark.reporting.paper import PaperTables
from benchmark.results import task_of

_GRID = 20_001  # points of the angle grid of t_quantile


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (numpy only).

    With ``x = sqrt(df) tan(theta)`` the density becomes ``c cos(theta)^(df-1)`` on
    ``(-pi/2, pi/2)``, smooth for every ``df >= 1``: its cumulative integral on a fine grid is
    inverted by interpolation (within 1e-6 of scipy's for df 1..30 at the usual levels)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    theta = np.linspace(0.0, math.pi / 2, _GRID)
    dens = np.cos(theta) ** (df - 1)
    cum = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(theta))])
    target = abs(p - 0.5) / 0.5 * cum[-1]  # the share of the half mass between 0 and the quantile
    angle = float(np.interp(target, cum, theta))
    return math.copysign(math.sqrt(df) * math.tan(angle), p - 0.5)


@dataclass(frozen=True)
class AcrossEffect:
    """One effect over the seeds: its per-seed values, their mean and the t-interval of the mean."""

    label: str
    values: tuple[tuple[int, float], ...]  # (seed, value)
    mean: float
    lo: float | None  # None with fewer than two seeds
    hi: float | None
    digits: int
    verdict: str

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class AcrossSeeds:
    """One claim on one scope over the seeds."""

    scope: str
    per_seed: tuple[tuple[int, Verdict | None], ...]  # None: the claim had no verdict there at that seed
    effects: tuple[AcrossEffect, ...]
    verdict: str


@dataclass(frozen=True)
class SeedReport:
    seeds: tuple[int, ...]
    claims: tuple[tuple[Claim, tuple[AcrossSeeds, ...]], ...]


def t_interval(values: np.ndarray, level: float) -> tuple[float, float | None, float | None]:
    """``(mean, lo, hi)``: the Student-t interval of the mean (no interval below two values)."""
    mean = float(values.mean())
    if values.size < 2:
        return mean, None, None
    half = t_quantile(0.5 + level / 2, values.size - 1) * float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, mean - half, mean + half


def _effects(per_seed: list[tuple[int, Verdict | None]], level: float) -> tuple[AcrossEffect, ...]:
    labels: list[str] = []
    for _, v in per_seed:
        for e in v.effects if v else ():
            if e.label not in labels:
                labels.append(e.label)
    out = []
    for label in labels:
        found = [(s, e) for s, v in per_seed if v for e in v.effects if e.label == label]
        values = np.array([e.value for _, e in found], dtype=np.float64)
        mean, lo, hi = t_interval(values, level)
        rule = found[0][1].decide
        verdict = NOT_TESTED if lo is None or hi is None else rule(Span(lo, hi))
        out.append(
            AcrossEffect(label, tuple((s, e.value) for s, e in found), mean, lo, hi, found[0][1].digits, verdict)
        )
    return tuple(out)


def _combined(effects: tuple[AcrossEffect, ...]) -> str:
    if not effects or any(e.verdict == NOT_TESTED for e in effects):
        return NOT_TESTED
    verdict = effects[0].verdict
    for e in effects[1:]:
        verdict = both(verdict, e.verdict)
    return verdict


def across_seeds(results: list[dict], estimator: Estimator, paper: PaperTables) -> SeedReport:
    """Every claim at every seed of ``results`` and across them (see the module docstring)."""
    seeds = seeds_of(results)
    if len(seeds) < 2:
        return SeedReport(tuple(seeds), ())
    by_seed: dict[int, dict[str, list[Verdict]]] = {}
    for seed in seeds:
        runs = [r for r in results if r.get("seed") == seed]
        by_seed[seed] = {
            c.name: c.evaluate([r for r in runs if task_of(r) in c.tasks], estimator, paper) for c in CLAIMS.values()
        }
    claims = []
    for claim in CLAIMS.values():
        scopes: list[str] = []
        for seed in seeds:
            for v in by_seed[seed][claim.name]:
                if v.scope not in scopes:
                    scopes.append(v.scope)
        rows = []
        for scope in scopes:
            per_seed = [
                (seed, next((v for v in by_seed[seed][claim.name] if v.scope == scope), None)) for seed in seeds
            ]
            effects = _effects(per_seed, estimator.options.level)
            rows.append(AcrossSeeds(scope, tuple(per_seed), effects, _combined(effects)))
        claims.append((claim, tuple(rows)))
    return SeedReport(tuple(seeds), tuple(claims))
