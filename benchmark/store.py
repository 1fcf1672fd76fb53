"""The checkpoint store: where a run's trained model lives in the cache, and getting it there.

Trained checkpoints are cached under ``<cache_dir>/checkpoints/<model>__<dataset>__<size>__<hash>``
where the hash covers everything that determines training (model options with their
defaults, data options, training settings, seed, the checkpoints it was built on).

* :func:`resolve_run` -- a run config's registered model class (checked against
  :class:`~lightning_modules.contract.SuiteModel`), its typed model config and its DataModule;
* :func:`checkpoint_dir` -- the cached checkpoint folder of a training config;
* :func:`resolve_dependencies` -- a model's ``checkpoint_dependencies`` filled with the cached
  checkpoints of the models it is built on (trained now if absent);
* :func:`ensure_checkpoint` -- the cached checkpoint of a run config, trained now if absent
  (through :func:`benchmark.training.create_fit_save`);
* :func:`with_eval_settings` -- a loaded model given the run's *evaluation-only* model options;
* :func:`checkpoint_with_data` -- a given trained checkpoint with its default run's DataModule and
  item loader (the scripts that probe or time a trained model).

A model class may declare ``eval_only_fields`` (config fields that change only how the trained
model is evaluated, e.g. ours' ``itm_conditioning``): they are left out of the checkpoint key
(:func:`training_config`, :func:`model_identity` with ``training=True``), so both values find
the same cached weights, and the run's value replaces the one stored with a loaded checkpoint.
In a result's identity (:func:`model_identity`) such a field counts only where it is not the
default, so results written before the field existed keep theirs.

The runner, the tasks (``--task speed``'s baseline, ``bench vqa``) and the feedback session
all reach trained models through this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L

from benchmark.config import (
    ConfigError,
    RunConfig,
    TrainConfig,
    build_run_config,
    from_dict,
    model_defaults,
    stable_hash,
    to_dict,
)
from benchmark.preflight import load_cached_checkpoint
from benchmark.registry import DATASETS, MODELS
from benchmark.training import create_fit_save, install_item_loader
from lightning_modules.contract import DependencyConfig, PretrainedConfig, dependencies_of

DATA_ROOT_ENV = "INSTRUCTSEE_DATA_ROOT"


@dataclass
class RunParts:
    """A run config resolved: the model class, its typed config (``model_args``) and the DataModule."""

    model_cls: Any
    model_config: Any
    dm: Any


def data_root(cfg: RunConfig) -> str:
    """``--data-root``; else generated data in the cache (synthetic) or ``$INSTRUCTSEE_DATA_ROOT/<dataset>``."""
    if cfg.data.root:
        return cfg.data.root
    if cfg.dataset == "synthetic":
        return str(Path(cfg.cache_dir) / "data")
    if os.environ.get(DATA_ROOT_ENV):
        return str(Path(os.environ[DATA_ROOT_ENV]) / cfg.dataset)
    return ""


def pretrained_of(model_config: Any) -> str | None:
    """The pretrained checkpoint a model config names (None: none, or a config without the field)."""
    return model_config.pretrained if isinstance(model_config, PretrainedConfig) else None


#: model config class (by module:name) -> checkpoint family; a model's family is its config's
#: first class (in method resolution order) listed here
CHECKPOINT_FAMILIES = {"lightning_modules.blip2:Blip2Config": "blip2", "lightning_modules.clip:ClipConfig": "clip"}


def checkpoint_family(config_cls: type) -> str | None:
    """The pretrained checkpoint family (blip2, clip) a model config class loads, None if unknown."""
    for klass in config_cls.__mro__:
        family = CHECKPOINT_FAMILIES.get(f"{klass.__module__}:{klass.__qualname__}")
        if family:
            return family
    return None


def resolve_run(cfg: RunConfig) -> RunParts:
    """The registered model class, its config from ``model_args`` (size-checked) and the DataModule."""
    model_cls = MODELS.get(cfg.model)
    model_config = from_dict(model_cls.Config, cfg.model_args, "model_args")
    pretrained = pretrained_of(model_config)
    if cfg.size == "full" and not pretrained:
        raise ConfigError("size 'full' needs model_args.pretrained: a hub id or a local checkpoint path")
    if cfg.size == "tiny" and pretrained:
        raise ConfigError("model_args.pretrained is set: use --size full for pretrained checkpoints")
    dm = DATASETS.get(cfg.dataset)(replace(cfg.data, root=data_root(cfg)), seed=cfg.seed)
    dm.set_check_cache(Path(cfg.cache_dir) / "image_checks")  # image verdicts kept across runs and ranks
    return RunParts(model_cls, model_config, dm)


def eval_only_fields(model_cls: Any) -> dict[str, Any]:
    """``{field: default}`` of a model class's ``eval_only_fields`` (options that change only
    the evaluation of the trained model; see the module docstring)."""
    names = tuple(getattr(model_cls, "eval_only_fields", ()) or ())
    if not names:
        return {}
    defaults = {f.name: f.default for f in dataclasses.fields(model_cls.Config)}
    unknown = [n for n in names if n not in defaults]
    if unknown:
        raise TypeError(f"{model_cls.__name__}.eval_only_fields names no field of its Config: {unknown}")
    return {n: defaults[n] for n in names}


def model_identity(model_cls: Any, model_config: Any, *, training: bool = False) -> dict:
    """The resolved model config (a config object or the dict a result file stores; defaults
    included) in JSON form, without the fields the runner fills with dependency checkpoints
    (``checkpoint_dependencies``: cache paths, which say nothing about the model), and without
    the ``eval_only_fields``: always with ``training`` (the checkpoint key), else where they
    hold their default (so results written before such a field existed keep their identity)."""
    deps = set(dependencies_of(model_cls))
    eval_only = eval_only_fields(model_cls)
    out = {}
    for k, v in json.loads(json.dumps(to_dict(model_config))).items():
        if k in deps or (k in eval_only and (training or v == eval_only[k])):
            continue
        out[k] = v
    return out


def training_config(cfg: RunConfig, model_cls: Any) -> RunConfig:
    """``cfg`` without the ``model_args`` that only change the evaluation (``eval_only_fields``)."""
    eval_only = eval_only_fields(model_cls)
    if not any(k in eval_only for k in cfg.model_args):
        return cfg
    return replace(cfg, model_args={k: v for k, v in cfg.model_args.items() if k not in eval_only})


def trained_config(model_cls: Any, model_config: Any) -> Any:
    """``model_config`` with its ``eval_only_fields`` at their defaults: the config a checkpoint
    is trained (and stored) with, the same whichever evaluation setting asked for it."""
    eval_only = eval_only_fields(model_cls)
    return replace(model_config, **eval_only) if eval_only else model_config


def with_eval_settings(model: Any, model_config: Any) -> Any:
    """``model`` (e.g. loaded from a checkpoint, whose stored config holds the values it was
    trained with) given ``model_config``'s ``eval_only_fields``; the model itself otherwise."""
    eval_only = eval_only_fields(type(model))
    values = {k: getattr(model_config, k) for k in eval_only if hasattr(model_config, k)}
    if values and any(getattr(model.config, k) != v for k, v in values.items()):
        model.config = replace(model.config, **values)
    return model


def checkpoint_dir(
    cfg: RunConfig,
    dependencies: dict[str, Any] | None = None,
    model_config: Any = None,
    model_cls: Any = None,
    content: dict[str, Any] | None = None,
) -> Path:
    """The cached checkpoint of a training config (and of the checkpoints it was built on).

    With ``model_config`` the key also covers the *resolved* model config (defaults
    included, the dependency fields of ``model_cls`` -- cache paths -- left out): a changed
    model default then trains a new checkpoint instead of loading one trained under the old
    default. ``content``: the DataModule's ``content_identity()`` (the ``folder`` dataset's
    annotations hash; {} for the fixed datasets, whose keys are then unchanged), so that two
    user folders with the same options never share a checkpoint."""
    h = (cfg if model_cls is None else training_config(cfg, model_cls)).training_hash()
    if content:
        h = stable_hash([h, content])
    if dependencies:
        h = stable_hash([h, {k: v["training_hash"] for k, v in sorted(dependencies.items())}])
    if model_config is not None:
        h = stable_hash([h, model_identity(model_cls, model_config, training=True)])
    return Path(cfg.cache_dir) / "checkpoints" / f"{cfg.model}__{cfg.dataset}__{cfg.size}__{h}"


def path_roots(cfg: RunConfig) -> dict[str, str | None]:
    """The folders a recorded path is written relative to (:mod:`benchmark.portable`): the data
    root, the cache and the results folder of the run."""
    return {"data": data_root(cfg) or None, "cache": cfg.cache_dir, "results": cfg.results_dir}


# -- checkpoint dependencies --------------------------------------------------------------
# A model class declares ``checkpoint_dependencies = {config_field: registered_model}``: at
# tiny size, a field left empty is filled with the checkpoint of that other model trained on
# the same dataset with the same seed (its shipped base config, the run's data options and
# hardware settings, then ``model_args.dependency_overrides[field]``), trained through this
# store if it is not cached. E.g. BLIP2's frozen vision tower is the tiny CLIP's.
INHERITED_TRAIN = (
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "num_threads",
    "deterministic",
    "precision",
    "gather_negatives",
)


def dependency_config(cfg: RunConfig, model: str, overrides: dict | None = None) -> RunConfig:
    """The run config of a dependency of ``cfg``: ``model``'s base config on the same data and seed."""
    data = to_dict(cfg.data)
    for k in ("batch_size", "global_batch_size"):
        data.pop(k)  # the dependency trains with its own batch size
    inherited = {
        "model": model,
        "dataset": cfg.dataset,
        "size": "tiny",
        "seed": cfg.seed,
        "cache_dir": cfg.cache_dir,
        "results_dir": cfg.results_dir,
        "data": data,
        "train": {k: getattr(cfg.train, k) for k in INHERITED_TRAIN},
    }
    return build_run_config(model_defaults(model), inherited, overrides or {})


def resolve_dependencies(
    cfg: RunConfig, model_cls: Any, model_config: Any, *, progress: bool = False, train: bool = True
) -> tuple[Any, dict[str, Any]]:
    """``(model_config with its dependency fields filled, {field: provenance})``; ``train=False``:
    a dependency that is not cached is an error instead of being trained."""
    deps = dependencies_of(model_cls)
    if cfg.size != "tiny" or not deps:
        return model_config, {}
    overrides = (model_config.dependency_overrides if isinstance(model_config, DependencyConfig) else None) or {}
    unknown = sorted(set(overrides) - set(deps))
    if unknown:
        raise ConfigError(
            f"model_args.dependency_overrides: {unknown[0]!r} is not a dependency "
            f"(dependencies: {', '.join(sorted(deps))})"
        )
    resolved: dict[str, Any] = {}
    for name, dep_model in sorted(deps.items()):
        given = getattr(model_config, name)
        if given:
            resolved[name] = {
                "model": dep_model,
                "checkpoint": str(given),
                "given": True,
                "training_hash": stable_hash(str(given)),
            }
            continue
        dep_cfg = dependency_config(cfg, dep_model, overrides.get(name))
        t = time.perf_counter()
        ckpt, trained = ensure_checkpoint(
            dep_cfg, progress=progress, train=train, announce=f"dependency {name} of {cfg.model}"
        )
        model_config = replace(model_config, **{name: str(ckpt)})
        resolved[name] = {
            "model": dep_model,
            "checkpoint": str(ckpt),
            "given": False,
            "trained_this_run": trained,
            "training_hash": ckpt.name.rsplit("__", 1)[-1],
            "config": to_dict(dep_cfg),
            "seconds": time.perf_counter() - t,
        }
    return model_config, resolved


def inherited_settings_note(cfg: RunConfig) -> str:
    """The training settings a dependency inherits from the run that differ from the defaults
    (they are part of its training hash, so they select -- or train -- another checkpoint)."""
    default = TrainConfig()
    changed = [
        f"train.{k}={getattr(cfg.train, k)}" for k in INHERITED_TRAIN if getattr(cfg.train, k) != getattr(default, k)
    ]
    return f"; inherited from this run: {', '.join(changed)}" if changed else ""


class MissingCheckpointError(ConfigError):
    """The cached checkpoint a run needs is not there and may not be trained now (``train=False``)."""


def ensure_checkpoint(
    cfg: RunConfig, *, progress: bool = False, train: bool = True, announce: str | None = None
) -> tuple[Path, bool]:
    """The cached checkpoint of ``cfg``'s training, trained (and cached) now if absent
    (``train=False``: absent is a :class:`MissingCheckpointError` naming the run that trains it).
    ``announce``: before training, say on stderr what is trained and why (e.g. a dependency)."""
    if cfg.train.max_epochs < 1:
        raise ConfigError(f"a dependency ({cfg.model}) must be trained: train.max_epochs must be >= 1")
    parts = resolve_run(cfg)
    model_config, deps = resolve_dependencies(cfg, parts.model_cls, parts.model_config, progress=progress, train=train)
    ckpt = checkpoint_dir(cfg, deps, model_config, parts.model_cls, parts.dm.content_identity())
    if ckpt.exists():
        return ckpt, False
    if not train:
        raise MissingCheckpointError(
            f"no trained {cfg.model} checkpoint for this config in {Path(cfg.cache_dir) / 'checkpoints'} "
            f"(run `bench run --model {cfg.model} --dataset {cfg.dataset} --seed {cfg.seed}` first)"
        )
    if announce:
        print(
            f"training {cfg.model} ({announce}; seed {cfg.seed}{inherited_settings_note(cfg)}): no cached "
            f"checkpoint {ckpt.name} in {ckpt.parent}",
            file=sys.stderr,
            flush=True,
        )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    parts.dm.prepare_data()
    create_fit_save(
        training_config(cfg, parts.model_cls),
        parts.model_cls,
        trained_config(parts.model_cls, model_config),
        parts.dm,
        ckpt,
        progress=progress,
    )
    return ckpt, True


def load_trained(cfg: RunConfig, *, progress: bool = False, train: bool = True) -> tuple[Any, Path, bool]:
    """``(model, checkpoint folder, trained_this_run)``: the run's cached model (trained now if
    absent and ``train``), loaded."""
    ckpt, trained = ensure_checkpoint(cfg, progress=progress, train=train)
    model_cls = MODELS.get(cfg.model)
    model = with_eval_settings(
        load_cached_checkpoint(model_cls, ckpt), from_dict(model_cls.Config, cfg.model_args, "model_args")
    )
    return model, ckpt, trained


def checkpoint_with_data(model: str, checkpoint: Path, cache_dir: str) -> tuple[Any, Any]:
    """``(model, DataModule)``: the trained suite checkpoint folder ``checkpoint`` of ``model``,
    loaded in evaluation mode, and the prepared DataModule of that model's default tiny run with
    the model's item loader (e.g. its cached frozen features) installed."""
    cfg = build_run_config(model_defaults(model), {"cache_dir": cache_dir})
    parts = resolve_run(cfg)
    parts.dm.prepare_data()
    loaded = parts.model_cls.load_checkpoint(checkpoint).eval()
    install_item_loader(cfg, loaded, parts.dm)
    return loaded, parts.dm
