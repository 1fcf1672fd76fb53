"""The validation layer of a run: :func:`check_run` checks a built :class:`RunConfig` as a whole
*before* any data is prepared or any model trained, so a bad option fails in a second with
exit 2 instead of after minutes of training.

The config dataclasses already refuse what can be judged from the values alone (types,
ranges, finite numbers, option names; ``benchmark/config.py``). This layer checks what needs
the registries or the machine:

* the model, dataset and task are registered, and ``model_args`` are valid for the model's
  own config class;
* the Trainer flags: ``train.strategy`` is ``auto`` or one of Lightning's registered
  strategies, ``train.accelerator`` is ``auto``, ``gpu`` or a registered accelerator that is
  available on this machine (``accelerator=gpu`` without a GPU fails here), and no more
  devices than it has are asked for;
* ``model_args.pretrained``: a local path must be a folder with a ``config.json``; anything
  else must be a hub id (``name`` or ``namespace/name``) and, where the model loads local
  files only (``local_files_only``, the default: nothing is downloaded at run time), in the
  local Hugging Face cache;
* ``--checkpoint`` is a folder;
* the results and cache folders are writable: a probe file of 4 KiB is written, flushed to
  disk (``fsync``: a full disk fails here) and removed, in the folder or, when it does not
  exist yet, in its nearest existing ancestor (nothing is created). A path that is a file,
  read-only or full fails with its option named.

Every failure is a :class:`~benchmark.config.ConfigError` naming the option and what was
expected (the CLI prints it and exits with code 2).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry

from benchmark.config import ConfigError, RunConfig, from_dict
from benchmark.pretrained_record import config_file
from benchmark.registry import DATASETS, MODELS, TASKS, UnknownNameError

#: a Hugging Face hub id: ``name`` or ``namespace/name``
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
#: bytes the writability probe writes (one file-system block: a full disk refuses it)
PROBE_BYTES = 4096


def check_run(cfg: RunConfig, *, writes_results: bool = True) -> None:
    """Refuse ``cfg`` with a :class:`ConfigError` if it cannot run on this machine.
    ``writes_results=False``: a command that writes no result file (``bench vqa``)."""
    for kind, registry, name in (
        ("model", MODELS, cfg.model),
        ("dataset", DATASETS, cfg.dataset),
        ("task", TASKS, cfg.task),
    ):
        if name not in registry:
            raise ConfigError(str(UnknownNameError(kind, name, registry.names())))
    model_config = from_dict(MODELS.get(cfg.model).Config, cfg.model_args, "model_args")
    check_pretrained(getattr(model_config, "pretrained", None), getattr(model_config, "local_files_only", True))
    check_trainer_flags(cfg.train.accelerator, cfg.train.strategy, cfg.train.devices)
    if cfg.checkpoint is not None and not Path(cfg.checkpoint).is_dir():
        raise ConfigError(
            f"--checkpoint {cfg.checkpoint}: not a folder (expected a trained suite checkpoint folder, "
            f"e.g. {Path(cfg.cache_dir) / 'checkpoints'}/<model>__<dataset>__<size>__<hash>)"
        )
    if writes_results:
        check_writable_folder(Path(cfg.results_dir), "results_dir (--results-dir)")
        target = cfg.result_path()
        if target.exists() and not target.is_file():
            raise ConfigError(
                f"result file {target}: exists and is not a regular file (expected a file the run "
                f"can replace, or nothing)"
            )
    check_writable_folder(Path(cfg.cache_dir), "cache_dir (--cache-dir / $INSTRUCTSEE_CACHE)")


def check_pretrained(value: str | None, local_files_only: bool = True) -> None:
    """``model_args.pretrained``: a local checkpoint folder, or a hub id (cached, when only local
    files may be read)."""
    if not value:
        return
    option = f"model_args.pretrained (--pretrained) {value!r}"
    saved = "a folder saved by save_pretrained (config.json and the weights)"
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ConfigError(
                f"{option}: {'has no config.json' if path.is_dir() else 'not a folder'}; expected {saved}"
            )
        return
    if value.startswith(("/", ".", "~")) or "\\" in value or not HUB_ID.match(value):
        raise ConfigError(
            f"{option}: no such file or folder; expected a local checkpoint folder or a hub id (name or namespace/name)"
        )
    if local_files_only and config_file(value) is None:
        raise ConfigError(
            f"{option}: no such local folder, and no hub checkpoint of that id in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); nothing is downloaded at run time: download it first "
            f"(e.g. `hf download {value}`) or give {saved}"
        )


def create_model(model_cls: Any, model_config: Any, optim: Any, vocab_texts: Sequence[str] = ()) -> Any:
    """``model_cls.create(model_config, optim, vocab_texts)``. A pretrained checkpoint the model
    cannot be built from (weights of another architecture, a truncated file, an option it cannot
    take, e.g. more query positions than the pretrained Q-Former has) is a :class:`ConfigError`
    naming ``--pretrained`` and the cause instead of a traceback; so is an option a tiny model
    refuses (a ``ValueError`` that names it)."""
    try:
        return model_cls.create(model_config, optim, vocab_texts)
    except Exception as e:
        pretrained = getattr(model_config, "pretrained", None)
        if isinstance(e, ValueError) and "model_args." in str(e):  # an option it refuses, named
            where = f" (with --pretrained {pretrained!r})" if pretrained else ""
            raise ConfigError(f"model {model_cls.__name__}{where}: {e}") from e
        if pretrained:
            cause = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
            raise ConfigError(
                f"model_args.pretrained (--pretrained) {pretrained!r}: a {model_cls.__name__} cannot be built "
                f"from it ({cause}); expected a checkpoint of that model's architecture (e.g. a "
                "Blip2ForImageTextRetrieval for blip2, ours, dynamicvit and crossget, a CLIPModel for clip)"
            ) from e
        raise


def _accelerator_available(name: str) -> bool:
    if name == "gpu":  # Lightning's alias: CUDA, else MPS
        return any(AcceleratorRegistry[n]["accelerator"].is_available() for n in ("cuda", "mps"))
    return AcceleratorRegistry[name]["accelerator"].is_available()


def check_trainer_flags(accelerator: str, strategy: str, devices: int) -> None:
    """The Lightning Trainer flags the run passes: names registered, the accelerator present."""
    strategies = ["auto", *StrategyRegistry.available_strategies()]
    if strategy not in strategies:
        raise ConfigError(
            f"train.strategy (--strategy) must be one of Lightning's strategies ({', '.join(strategies)}), "
            f"got {strategy!r}"
        )
    accelerators = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
    if accelerator not in accelerators:
        raise ConfigError(f"train.accelerator must be one of {', '.join(accelerators)}, got {accelerator!r}")
    if accelerator != "auto" and not _accelerator_available(accelerator):
        raise ConfigError(f"train.accelerator={accelerator!r}: no such device on this machine (use 'auto' or 'cpu')")
    if accelerator in ("gpu", "cuda"):
        count = torch.cuda.device_count()
        if count and devices > count:
            raise ConfigError(f"train.devices (--devices) {devices}: this machine has {count} GPU(s)")


def check_writable_folder(path: Path, option: str) -> None:
    """``path`` is a folder (or can be created as one) where files can be written: a probe file
    is written, fsynced and removed in it, or -- when it does not exist yet -- in its nearest
    existing ancestor (nothing is created: a run that fails later leaves no empty folder)."""
    probe_dir = path
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        where = "" if probe_dir == path else f" (its ancestor {probe_dir} is not a folder)"
        raise ConfigError(f"{option} {path}: exists and is not a folder{where}; expected a writable folder")
    probe = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=probe_dir)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        where = "" if probe_dir == path else f" (probed in {probe_dir}, where it would be created)"
        raise ConfigError(
            f"{option} {path}: not writable{where}: {e.strerror or e}; expected a folder with room for the run's files"
        ) from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)


def load_cached_checkpoint(model_cls, directory: Path, *, given: bool = False):
    """``model_cls.load_checkpoint(directory)``; a checkpoint that cannot be loaded (truncated or
    corrupt weights: ``SafetensorError``, a broken config file, ...) is a :class:`ConfigError`
    naming the folder and the way out instead of a traceback: ``--retrain`` for a checkpoint of
    the cache, another folder for one given with ``--checkpoint`` (``given=True``)."""
    try:
        return model_cls.load_checkpoint(directory)
    except Exception as e:
        what, fix = (
            ("--checkpoint", "give a complete checkpoint folder saved by the suite")
            if given
            else ("cached checkpoint", "run again with --retrain to train it anew (or delete the folder)")
        )
        raise ConfigError(
            f"{what} {directory} cannot be loaded ({type(e).__name__}: {str(e)[:300]}); it is "
            f"truncated, corrupt or not a {model_cls.__name__} checkpoint: {fix}"
        ) from e
