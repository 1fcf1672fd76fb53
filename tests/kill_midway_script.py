"""``bench run`` that kills itself (SIGKILL, no clean-up) in the middle of an epoch of one model's
training: epoch 1, after its first batch, i.e. after the epoch-0 resume point was written.

Usage: ``python tests/kill_midway_script.py CLASS_NAME bench-run-args...`` (tests/test_resume.py)."""

from __future__ import annotations

import os
import signal
import sys

from benchmark import resume

target, argv = sys.argv[1], sys.argv[2:]
_original = resume.ResumePoint.on_train_batch_end


def _killing(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
    if type(pl_module).__name__ == target and trainer.current_epoch == 1 and batch_idx == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    _original(self, trainer, pl_module, outputs, batch, batch_idx)


resume.ResumePoint.on_train_batch_end = _killing  # type: ignore[method-assign]

from benchmark.cli import main  # noqa: E402

sys.argv = ["bench", *argv]
sys.exit(main())
