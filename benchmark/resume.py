"""Resumable training: a Lightning checkpoint of the fit in progress, written atomically to the cache.

A run that trains writes ``<cache>/resume/<checkpoint name>/last.ckpt`` (model, optimizer,
scheduler and loop state, plus the RNG states, which Lightning does not store itself) at the
end of every epoch and, with ``train.checkpoint_every_n_steps``, every N optimizer steps. The
same command run again after a crash (``kill -9`` included) resumes from it
(``train.resume="auto"``, the default; ``"never"`` starts over and discards it). Each save goes
to a temporary name first and is renamed into place, so a crash during a save leaves the
previous resume point intact. Once the trained suite checkpoint is saved, the resume folder is
removed. Resuming from an epoch boundary is exact at tiny size (the test kills a run mid-epoch
and compares the final metrics with an uninterrupted run); a step checkpoint restarts its
epoch's data order from the epoch's beginning (the sampler is not stateful), so it saves time
but not bit-identity.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

LAST = "last.ckpt"
RESUME_MODES = ("auto", "never")


def resume_dir(cache_dir: str, checkpoint: Path) -> Path:
    """Where the resume point of the training that produces ``checkpoint`` lives."""
    return Path(cache_dir) / "resume" / Path(checkpoint).name


class ResumePoint(L.Callback):
    """Saves ``last.ckpt`` atomically at every epoch end (and every ``every_n_steps`` steps)."""

    def __init__(self, directory: Path, every_n_steps: int | None = None) -> None:
        self.directory = Path(directory)
        self.every_n_steps = every_n_steps

    def _save(self, trainer: L.Trainer) -> None:
        tmp = self.directory / f".{LAST}.partial"
        if trainer.is_global_zero:
            self.directory.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)  # collective: rank 0 writes; optimizer and loops too
        if trainer.is_global_zero:
            os.replace(tmp, self.directory / LAST)
        trainer.strategy.barrier("resume-point-saved")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and not trainer.is_last_batch:
            self._save(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"rng_states": _portable(_collect_rng_states())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _set_rng_states(_restored(state_dict["rng_states"]))


def _portable(states: dict[str, Any]) -> dict[str, Any]:
    """RNG states in types ``torch.load(weights_only=True)`` accepts (numpy's key array as a tensor)."""
    out = dict(states)
    if "numpy" in out:
        kind, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = [
            kind,
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ]
    if "python" in out:
        version, internal, gauss = out["python"]
        out["python"] = [int(version), list(internal), gauss]
    return out


def _restored(states: dict[str, Any]) -> dict[str, Any]:
    out = dict(states)
    if "numpy" in out:
        kind, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    if "python" in out:
        version, internal, gauss = out["python"]
        out["python"] = (version, tuple(internal), gauss)
    return out


def resume_from(directory: Path, mode: str) -> str | None:
    """The checkpoint to resume from (``mode`` "auto" and one exists), else None ("never" discards it)."""
    last = Path(directory) / LAST
    if mode == "never":
        shutil.rmtree(directory, ignore_errors=True)
        return None
    return str(last) if last.is_file() else None
