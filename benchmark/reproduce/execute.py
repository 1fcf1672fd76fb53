"""Run the steps of a ``bench reproduce`` plan one after the other, with progress and a summary.

Each step prints ``[i/N] <title> ...`` when it starts and ``[i/N] <title>: <status> in <s> s``
with its result file when it ends. A step that raises is recorded as ``failed`` (the message on
the line, the traceback on stderr for errors other than bad configs or data) and the next step
starts: result files already written stay as they are (the runner writes them atomically).
Ctrl-C stops everything. The summary lists step, status, seconds and result file (no ETA: the
cost of a step depends on what the cache already holds).
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Sequence

from benchmark.config import ConfigError
from benchmark.reproduce.plan import Plan
from benchmark.reproduce.steps import FAILED, RunSettings, StepError, StepOutcome, StepRecord
from benchmark.text_table import text_table
from datamodules.base import DataError

Echo = Callable[..., None]  # echo(message, err=False), e.g. typer.echo


def _print(message: str = "", err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def _expected_errors() -> tuple[type[BaseException], ...]:
    return StepError, ConfigError, DataError


def execute_plan(plan: Plan, settings: RunSettings | None = None, echo: Echo = _print) -> list[StepRecord]:
    """Execute every step; a failure is recorded and the next step runs."""
    settings = settings or RunSettings()
    records: list[StepRecord] = []
    n = len(plan.steps)
    for i, step in enumerate(plan.steps, 1):
        head = f"[{i}/{n}] {step.title}"
        echo(f"{head} ...")
        t = time.perf_counter()
        try:
            outcome = step.execute(settings, records)
        except Exception as e:  # noqa: BLE001 - a failing step must not stop the others
            if not isinstance(e, _expected_errors()):
                echo(traceback.format_exc(), err=True)
            outcome = StepOutcome(FAILED, f"{type(e).__name__}: {e}")
        seconds = time.perf_counter() - t
        records.append(StepRecord(head, outcome.status, seconds, outcome.result))
        for note in outcome.notes:
            echo(f"  note: {note}")
        echo(f"{head}: {outcome.status} in {seconds:.1f} s" + (f": {outcome.result}" if outcome.result else ""))
    return records


def summary(records: Sequence[StepRecord]) -> str:
    """The table of every step (step, status, seconds, result file) and one line of totals."""
    table = text_table(
        ["Step", "Status", "Seconds", "Result"],
        [[r.title, r.status, round(r.seconds, 1), r.result] for r in records],
        digits=1,
    )
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    total = sum(r.seconds for r in records)
    return f"{table}\n{len(records)} steps in {total:.1f} s: " + ", ".join(f"{v} {k}" for k, v in counts.items())


def failed(records: Sequence[StepRecord]) -> list[StepRecord]:
    return [r for r in records if r.failed]
