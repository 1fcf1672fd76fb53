"""The options of a report (``bench report``): bootstrap size, seed, level, margins; validated.

* ``n_boot`` resamples of the queries (percentile bootstrap), drawn from ``seed``: the same
  seed gives the same intervals; both are printed in every report.
* ``level``: the confidence level of every interval (0.95).
* ``equal_margin``: two retrieval scores (R@5, MRR, Sim, in [0, 1]) are called *equal* when
  the 95 % interval of their paired difference lies inside ``[-equal_margin, +equal_margin]``.
* ``throughput_tolerance``: throughputs have no per-query interval; two are called different
  only when they differ by more than this fraction of the slower one.
* ``direction``: the retrieval direction of the tables and claims (the paper's: ``t2i``).
"""

from __future__ import annotations

from dataclasses import dataclass

DIRECTIONS = ("t2i", "i2t", "i2i")


class ReportOptionsError(ValueError):
    """A bad report option; the message names it and what was expected."""


@dataclass(frozen=True)
class ReportOptions:
    n_boot: int = 1000
    seed: int = 0
    level: float = 0.95
    equal_margin: float = 0.02
    throughput_tolerance: float = 0.05
    direction: str = "t2i"

    def __post_init__(self) -> None:
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, int) or self.n_boot < 100:
            raise ReportOptionsError(f"--bootstrap must be an integer >= 100 (resamples), got {self.n_boot!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ReportOptionsError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if not 0.5 <= float(self.level) < 1.0:
            raise ReportOptionsError(f"level must lie in [0.5, 1), got {self.level!r}")
        if not 0.0 <= float(self.equal_margin) < 1.0:
            raise ReportOptionsError(f"equal_margin must lie in [0, 1), got {self.equal_margin!r}")
        if not 0.0 <= float(self.throughput_tolerance) < 1.0:
            raise ReportOptionsError(f"throughput_tolerance must lie in [0, 1), got {self.throughput_tolerance!r}")
        if self.direction not in DIRECTIONS:
            raise ReportOptionsError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")

    @property
    def percent(self) -> str:
        return f"{100 * self.level:g} %"

    def describe(self) -> str:
        """One line for the top of every report."""
        return (
            f"Intervals: {self.percent} percentile bootstrap over queries, B = {self.n_boot} resamples, "
            f"seed {self.seed} (numpy default_rng); direction {self.direction}; "
            f"'equal' = the {self.percent} interval of the paired difference lies within "
            f"±{self.equal_margin:g}."
        )
