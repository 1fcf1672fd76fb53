"""Compare new result files with baseline result files, metric by metric, under tolerances.

Runs are matched by result-file name (``<model>__<dataset>__<tag>.json``). Per metric key
(:class:`~benchmark.regression.tolerances.Tolerances` decides the rule):

* ``ok`` -- within the tolerance (or null in both);
* ``REGRESSION`` -- beyond it in the worse direction (for ``better: either``: any
  direction), or a value that became null;
* ``improved`` -- beyond it in the better direction (not a failure; update the baseline);
* ``MISSING`` -- in the baseline, absent from the new run (a failure);
* ``new`` -- absent from the baseline (not a failure); ``ignored`` -- the rule ignores it.

Both sides are checked first, as every result file the suite reads (:func:`benchmark.results.load_result`,
:func:`benchmark.result_checks.check_result`): a baseline that cannot be read, or a metric that is
not a finite number or null or out of its range, is a :class:`~benchmark.result_checks.ResultFileError`
naming the file and the field.
A new run without a baseline file is reported separately (:attr:`Comparison.missing_baselines`):
it cannot be compared, and ``bench regress`` refuses to pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.regression.tolerances import Tolerances
from benchmark.result_checks import check_result
from benchmark.results import load_result

FAILING = ("REGRESSION", "MISSING")
HEADLINE = (
    "t2i/R@5",
    "t2i/MRR",
    "t2i/Sim",
    "i2t/R@5",
    "qlen/mean",
    "gflops/total",
    "memory_mb",
    "throughput_img_s",
    "throughput_query_s",
)
_EPS = 1e-12  # float noise of the subtraction itself


@dataclass(frozen=True)
class Row:
    run: str
    key: str
    old: float | None
    new: float | None
    delta: float | None
    tolerance: str
    status: str

    @property
    def failing(self) -> bool:
        return self.status in FAILING


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    missing_baselines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.failing]

    @property
    def ok(self) -> bool:
        return not self.regressions and not self.missing_baselines

    def shown(self, everything: bool = False) -> list[Row]:
        """The rows worth printing: headline metrics and every row that is not ``ok``/``ignored``."""
        if everything:
            return self.rows
        return [r for r in self.rows if r.key in HEADLINE or r.status not in ("ok", "ignored")]


def _status(old: float | None, new: float | None, rule) -> tuple[float | None, str]:
    if old is None and new is None:
        return None, "ok"
    if new is None:
        return None, "REGRESSION"
    if old is None:
        return None, "improved"
    delta = float(new) - float(old)
    if abs(delta) <= rule.abs + _EPS:
        return delta, "ok"
    if rule.better == "higher":
        return delta, "improved" if delta > 0 else "REGRESSION"
    if rule.better == "lower":
        return delta, "improved" if delta < 0 else "REGRESSION"
    return delta, "REGRESSION"


def compare_metrics(
    run: str, old: Mapping[str, float | None], new: Mapping[str, float | None], tolerances: Tolerances
) -> list[Row]:
    rows = []
    for key in sorted(set(old) | set(new)):
        rule = tolerances.rule(key)
        o, n = old.get(key), new.get(key)
        if rule.ignore:
            delta = None if o is None or n is None else float(n) - float(o)
            rows.append(Row(run, key, o, n, delta, rule.describe(), "ignored"))
        elif key not in new:
            rows.append(Row(run, key, o, None, None, rule.describe(), "MISSING"))
        elif key not in old:
            rows.append(Row(run, key, None, n, None, rule.describe(), "new"))
        else:
            delta, status = _status(o, n, rule)
            rows.append(Row(run, key, o, n, delta, rule.describe(), status))
    return rows


def _notes(name: str, old: dict, new: dict) -> list[str]:
    notes = []
    if old.get("config_hash") != new.get("config_hash"):
        notes.append(
            f"{name}: the config differs from the baseline's (config_hash {old.get('config_hash')} -> "
            f"{new.get('config_hash')}): differences may come from the config"
        )
    eo, en = old.get("environment") or {}, new.get("environment") or {}
    pairs = [("torch", (eo.get("packages") or {}).get("torch"), (en.get("packages") or {}).get("torch"))]
    pairs += [(k, eo.get(k), en.get(k)) for k in ("platform", "device", "cuda_device_name")]
    for what, a, b in pairs:
        if a != b:
            notes.append(f"{name}: {what} differs from the baseline's ({a} -> {b})")
    return notes


def compare_results(new: Mapping[str, dict], baseline_dir: Path, tolerances: Tolerances) -> Comparison:
    """``new``: result-file name -> result; each is compared with ``baseline_dir/<name>``."""
    out = Comparison()
    for name in sorted(new):
        path = Path(baseline_dir) / name
        if not path.exists():
            out.missing_baselines.append(name)
            continue
        old = load_result(path, "baseline result file")
        check_result(new[name], f"new result {name}")
        out.rows += compare_metrics(name, old["metrics"], new[name]["metrics"], tolerances)
        out.notes += _notes(name, old, new[name])
    return out
