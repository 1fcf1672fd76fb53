"""The steps of ``bench reproduce``: each knows how to execute itself and what it produced.

* :class:`RunStep`: one run through :func:`benchmark.runner.run` (``ok``; ``existing`` when
  ``--skip-existing`` finds its result file already holding the same config);
* :class:`SharedStep`: an ablation arm whose config is an earlier step's (``shared``: that
  step's result file is this arm's; nothing runs);
* :class:`SkippedStep`: a model that cannot run tiny on SynthScenes (``skipped``, with the reason);
* :class:`BrokenStep`: a shipped config that is no valid run (``failed`` when its turn comes,
  so the other steps still run);
* :class:`ReportStep`: :func:`benchmark.reporting.build.write_reports` over the results folder.

A step raises on failure (:class:`StepError` when the message says it all);
:mod:`benchmark.reproduce.execute` records it and goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.config import RunConfig
from benchmark.reporting.build import write_reports
from benchmark.reporting.options import ReportOptions
from benchmark.runner import result_is_current, run

OK, EXISTING, SHARED, SKIPPED, FAILED = "ok", "existing", "shared", "skipped", "failed"


class StepError(RuntimeError):
    """A step that cannot run; the message says why (no traceback needed)."""


@dataclass(frozen=True)
class RunSettings:
    """How run steps run: ``retrain`` ignores cached checkpoints, ``skip_existing`` keeps result
    files that already hold the same config, ``progress`` shows Lightning's progress bars."""

    retrain: bool = False
    skip_existing: bool = True
    progress: bool = False


@dataclass(frozen=True)
class StepOutcome:
    status: str
    result: str = ""  # the result file (or folder, or the reason of a skip)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepRecord:
    title: str
    status: str
    seconds: float
    result: str

    @property
    def failed(self) -> bool:
        return self.status == FAILED


@dataclass(frozen=True)
class Step:
    title: str  # "ours", "ours (ablation qscaler: without)", "report"
    selectors: tuple[str, ...]  # the names ``--only`` selects it by

    def execute(self, settings: RunSettings, done: Sequence[StepRecord]) -> StepOutcome:
        raise NotImplementedError

    def preview(self, settings: RunSettings) -> str:
        """What executing would do, for ``--dry-run`` (runs nothing)."""
        return "run"


@dataclass(frozen=True)
class RunStep(Step):
    config: RunConfig | None = None

    def execute(self, settings: RunSettings, done: Sequence[StepRecord]) -> StepOutcome:
        assert self.config is not None
        outcome = run(
            self.config, retrain=settings.retrain, skip_existing=settings.skip_existing, progress=settings.progress
        )
        return StepOutcome(EXISTING if outcome.skipped else OK, str(outcome.path))

    def preview(self, settings: RunSettings) -> str:
        assert self.config is not None
        if settings.skip_existing and result_is_current(self.config):
            return f"existing: {self.config.result_path()} holds this run (--no-skip-existing runs it again)"
        return "run"


@dataclass(frozen=True)
class SharedStep(Step):
    same_as: int = 0  # index of the earlier step (0-based, in the plan)
    same_title: str = ""

    def execute(self, settings: RunSettings, done: Sequence[StepRecord]) -> StepOutcome:
        earlier = done[self.same_as]
        if earlier.failed:
            raise StepError(f"it is the run of [{self.same_as + 1}] {self.same_title}, which failed")
        return StepOutcome(SHARED, f"{earlier.result} (same config as [{self.same_as + 1}] {self.same_title})")

    def preview(self, settings: RunSettings) -> str:
        return f"same config as [{self.same_as + 1}] {self.same_title}"


@dataclass(frozen=True)
class SkippedStep(Step):
    reason: str = ""

    def execute(self, settings: RunSettings, done: Sequence[StepRecord]) -> StepOutcome:
        return StepOutcome(SKIPPED, self.reason)

    def preview(self, settings: RunSettings) -> str:
        return f"skipped: {self.reason}"


@dataclass(frozen=True)
class BrokenStep(Step):
    error: str = ""

    def execute(self, settings: RunSettings, done: Sequence[StepRecord]) -> StepOutcome:
        raise StepError(self.error)

    def preview(self, settings: RunSettings) -> str:
        return f"broken: {self.error}"


@dataclass(frozen=True)
class ReportStep(Step):
    results_dir: Path = Path("results")
    out_dir: Path = Path("reports")
    options: ReportOptions = field(default_factory=ReportOptions)

    def execute(self, settings: RunSettings, done: Sequence[StepRecord]) -> StepOutcome:
        outcome = write_reports(self.results_dir, self.out_dir, self.options)
        return StepOutcome(OK, f"{self.out_dir} ({len(outcome.files)} files)", tuple(outcome.notes))

    def preview(self, settings: RunSettings) -> str:
        return f"report into {self.out_dir}"
