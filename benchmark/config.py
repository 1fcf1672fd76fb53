"""Typed run configuration: dataclasses validated on construction, to and from JSON.

A run is described by one :class:`RunConfig`. It is built from defaults, then an optional
JSON override file (``--config``), then the CLI flags given explicitly, then ``--set
key.path=value`` overrides (the one builder: ``benchmark/run_flags.py``), and validated field
by field: an unknown key, a wrong type or a non-finite number (NaN, inf: refused for every
float option) names the offending key and what was expected. What needs the registries or the
machine (Trainer flags, GPUs, writable output and cache folders, checkpoint paths) is checked
as a whole before any data is prepared (``benchmark/preflight.py``). JSON files are read with
``datamodules/safe_json.py``. ``to_dict`` / ``from_dict`` round-trip exactly, and the config is
stored whole in every result file. Model-specific options (``model_args``) are validated by
the model's own config class when the model is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from benchmark.config_error import ConfigError
from benchmark.measure.settings import MeasureConfig
from benchmark.registry import TASKS
from datamodules.base import DIRECTIONS
from datamodules.datamodule import DataConfig
from datamodules.safe_json import JsonReadError, loads_json, read_json
from lightning_modules.optim import OptimConfig

SIZES = ("tiny", "full")
#: seeds numpy (and so ``lightning.seed_everything``) accepts
MAX_SEED = 2**32 - 1
#: ``train.precision`` values: Lightning's precision flags (``lightning.fabric.connector._PRECISION_INPUT_STR``
#: and its aliases; tests/test_preflight.py checks the list against the installed Lightning)
TRAIN_PRECISIONS = (
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "16",
    "32",
    "64",
    "bf16",
)
DEFAULT_TASK = "retrieval"
_TAG = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def default_cache_dir() -> str:
    return os.environ.get("INSTRUCTSEE_CACHE", str(Path.home() / ".cache" / "instructsee-bench"))


@dataclass(frozen=True)
class TrainConfig:
    """How a tiny model is trained (Lightning Trainer settings and the optimizer).

    max_epochs: 0 means "no training" (a pretrained model evaluated as it is).
    accelerator / devices / strategy: passed to ``lightning.Trainer``; ``strategy="ddp"``
    with several devices or nodes is how the suite scales out.
    num_threads: torch intra-op threads (None = torch's default); recorded in results.
    resume: "auto" resumes an interrupted training from its last resume point in the cache
        (``benchmark/resume.py``); "never" starts over.
    checkpoint_every_n_steps: also save a resume point every N optimizer steps (None: at epoch ends only).
    num_nodes: machines; Lightning reads the cluster environment (SLURM, torchrun's variables),
        so ``bench run --devices 8 --strategy ddp --set train.num_nodes=2`` started by ``srun``
        (one task per device) or ``torchrun --nnodes 2 --nproc-per-node 8`` needs no launcher
        of the suite's; the cache folder must be shared by the nodes (rank 0 saves the
        checkpoints every process then loads).
    gather_negatives: with more than one process, the contrastive losses (CLIP's InfoNCE, the
        BLIP-2 family's ITC, ours' ITC and length terms, BLIP-2's ITM hard negatives) score each
        process's rows against every process's items, gathered with gradient (open_clip /
        LAVIS; ``lightning_modules/components/cross_rank.py``): the negatives are the global
        batch. False: each process's own batch only. No effect in one process.
    grad_checkpointing: activation (gradient) checkpointing of the trained layers -- the Q-Former and a
        trained vision tower (CLIP's; DynamicViT's / CrossGET's token-reducing tower): their
        activations are recomputed in the backward pass instead of kept (less memory, about one
        more forward pass of them per step); through the model's ``enable_grad_checkpointing()``,
        and a model without it refuses the option. Left out of the config hash when off.
    """

    max_epochs: int = 12
    optim: OptimConfig = field(default_factory=OptimConfig)
    gradient_clip_val: float = 1.0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_threads: int | None = None
    deterministic: bool = True
    limit_train_batches: float = 1.0
    val_every_n_epochs: int = 5
    resume: str = "auto"
    checkpoint_every_n_steps: int | None = None
    gather_negatives: bool = True
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.grad_checkpointing, bool):
            raise ConfigError(f"train.grad_checkpointing must be true or false, got {self.grad_checkpointing!r}")
        if self.val_every_n_epochs < 1:
            raise ConfigError("train.val_every_n_epochs must be >= 1")
        if self.max_epochs < 0:
            raise ConfigError("train.max_epochs must be >= 0")
        if self.devices < 1 or self.num_nodes < 1:
            raise ConfigError("train.devices and train.num_nodes must be >= 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError("train.num_threads must be >= 1 or null")
        if not math.isfinite(self.gradient_clip_val) or self.gradient_clip_val < 0:
            raise ConfigError(f"train.gradient_clip_val must be a finite number >= 0, got {self.gradient_clip_val}")
        if self.precision not in TRAIN_PRECISIONS:
            raise ConfigError(
                f"train.precision must be one of Lightning's precision flags "
                f"({', '.join(TRAIN_PRECISIONS)}), got {self.precision!r}"
            )
        if not 0 < self.limit_train_batches <= 1:
            raise ConfigError("train.limit_train_batches must be in (0, 1]")
        if self.resume not in ("auto", "never"):
            raise ConfigError(
                f"train.resume must be 'auto' (resume an interrupted training) or 'never', got {self.resume!r}"
            )
        if self.checkpoint_every_n_steps is not None and not 1 <= self.checkpoint_every_n_steps <= 10**9:
            raise ConfigError("train.checkpoint_every_n_steps must be an integer >= 1 or null")


#: ``eval.precision`` values: Lightning's precision flags (autocast for the "-mixed" ones)
EVAL_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
#: ``eval.storage_dtype`` values: the dtype gallery embeddings and cached vision tokens are kept in
STORAGE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class EvalConfig:
    """What is evaluated: directions, cut-offs, the query chunk size of the scorer, how
    (precision, storage) and whether (and how) the run's cost is measured.

    precision: Lightning precision of every evaluation loop (feature extraction, encoding,
        scoring); None = "bf16-mixed" at full size on a GPU, "32-true" otherwise.
    storage_dtype: dtype of the stored gallery (embeddings, cached vision tokens); None =
        "float16" at full size, "float32" at tiny size.
    memmap_min_mb: cached vision-token files larger than this are memory-mapped from disk
        instead of read into memory, and per-item tables of the evaluation (embeddings, a
        token-reduction model's reduced tokens) that reach it are kept in files in the cache.
    """

    directions: tuple[str, ...] = DIRECTIONS
    ks: tuple[int, ...] = (1, 5, 10)
    chunk_size: int = 1024
    measure: bool = True  # FLOPs, memory and throughput after the evaluation (benchmark/measure/run_costs.py)
    measurement: MeasureConfig = field(default_factory=MeasureConfig)
    precision: str | None = None
    storage_dtype: str | None = None
    memmap_min_mb: float = 1024.0

    def __post_init__(self) -> None:
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise ConfigError(f"eval.directions must be a non-empty subset of {DIRECTIONS}, got {self.directions}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError("eval.ks must be positive integers")
        if not 1 <= self.chunk_size <= 1 << 20:
            raise ConfigError(f"eval.chunk_size must be in [1, {1 << 20}], got {self.chunk_size}")
        if self.precision is not None and self.precision not in EVAL_PRECISIONS:
            raise ConfigError(
                f"eval.precision must be one of {', '.join(EVAL_PRECISIONS)} or null, got {self.precision!r}"
            )
        if self.storage_dtype is not None and self.storage_dtype not in STORAGE_DTYPES:
            raise ConfigError(
                f"eval.storage_dtype must be one of {', '.join(STORAGE_DTYPES)} or null, got {self.storage_dtype!r}"
            )
        if not 0 <= self.memmap_min_mb <= 1 << 30:  # NaN fails both comparisons
            raise ConfigError(f"eval.memmap_min_mb must be a number in [0, {1 << 30}], got {self.memmap_min_mb}")

    def resolved(self, size: str, on_gpu: bool) -> tuple[str, str]:
        """``(precision, storage_dtype)`` with the size- and device-dependent defaults filled in."""
        precision = self.precision or ("bf16-mixed" if size == "full" and on_gpu else "32-true")
        return precision, self.storage_dtype or ("float16" if size == "full" else "float32")


@dataclass(frozen=True)
class RunConfig:
    """One ``bench run``: which model on which dataset, at which size, and how."""

    model: str
    dataset: str = "synthetic"
    size: str = "tiny"
    tag: str = "default"
    task: str = DEFAULT_TASK
    seed: int = 0
    model_args: dict = field(default_factory=dict)
    task_args: dict = field(default_factory=dict)  # validated by the task's own Options when it runs
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    results_dir: str = "results"
    cache_dir: str = field(default_factory=default_cache_dir)
    checkpoint: str | None = None  # a trained suite checkpoint folder to evaluate (no training, no dependencies)

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"size must be one of {SIZES}, got {self.size!r}")
        if not _TAG.match(self.tag):
            raise ConfigError(f"tag must match {_TAG.pattern} (it becomes part of a file name), got {self.tag!r}")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS.names())}, got {self.task!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer in [0, {MAX_SEED}] (numpy's seed range), got {self.seed}")
        self._derive_batch_size()
        self._absolute_pretrained()

    def _absolute_pretrained(self) -> None:
        """A local ``model_args.pretrained`` given relative (or with ``~``) is made absolute: a
        checkpoint trained from it references its base, which must load from any working directory
        (and on every node), and the same folder gives the same config however it was typed. Hub
        ids and paths that do not exist are left as they are (the preflight judges them)."""
        value = self.model_args.get("pretrained")
        if not isinstance(value, str) or not value or os.path.isabs(value):
            return
        path = Path(value).expanduser()
        if path.exists():
            object.__setattr__(self, "model_args", {**self.model_args, "pretrained": str(path.resolve())})

    def _derive_batch_size(self) -> None:
        """``data.global_batch_size`` set: each process takes global / (devices x nodes) as its
        ``data.batch_size``. A per-process batch given beside it must agree (else one of the two
        would be silently ignored)."""
        total = self.data.global_batch_size
        if total is None:
            return
        world = self.train.devices * self.train.num_nodes
        if total % world:
            raise ConfigError(
                f"data.global_batch_size {total} must be a multiple of the processes, train.devices x "
                f"train.num_nodes = {world}"
            )
        per = total // world
        if self.data.batch_size not in (per, _DEFAULT_BATCH):
            raise ConfigError(
                f"data.batch_size {self.data.batch_size} and data.global_batch_size {total} are both set "
                f"(over {world} processes that is {per} each): give one of them (data.global_batch_size=null "
                "for a per-process batch)"
            )
        object.__setattr__(self, "data", dataclasses.replace(self.data, batch_size=per))

    # -- identity ----------------------------------------------------------------------
    def result_path(self) -> Path:
        """``<model>__<dataset>__<tag>.json`` for retrieval (the default task), else
        ``<model>__<dataset>__<task>__<tag>.json``: four parts, so no retrieval file (three
        parts; model, dataset and task names hold no ``__``) is taken for another task's."""
        task = "" if self.task == DEFAULT_TASK else f"{self.task}__"
        return Path(self.results_dir) / f"{self.model}__{self.dataset}__{task}{self.tag}.json"

    def identity(self) -> dict[str, Any]:
        """The parts of the config that determine the result (not where files go). The task
        counts only when it is not the default, so retrieval hashes are those of before tasks."""
        d = to_dict(self)
        for k in ("tag", "results_dir", "cache_dir"):
            d.pop(k)
        if d["task"] == DEFAULT_TASK:
            d.pop("task")
        if not d["task_args"]:
            d.pop("task_args")
        d["data"] = data_identity(d["data"])
        for section, name in _NOT_HASHED:
            d[section].pop(name)
        for parent, name, default in _HASHED_UNLESS_DEFAULT:
            node = d if parent is None else d[parent]
            if node[name] == default:
                node.pop(name)
        return d

    def config_hash(self) -> str:
        return stable_hash(self.identity())

    def eval_settings(self) -> tuple[str, str]:
        """``(precision, storage_dtype)`` of the run's evaluation (``eval.*``, defaults resolved for
        the run's size and accelerator)."""
        accel = self.train.accelerator
        on_gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
        return self.eval.resolved(self.size, on_gpu)

    def training_hash(self) -> str:
        """Determines a trained checkpoint: everything but evaluation settings."""
        d = self.identity()
        d.pop("eval")
        for k in ("task", "task_args"):
            d.pop(k, None)  # every task evaluates the same trained retrieval checkpoint
        for k in ("eval_batch_size", "eval_split", "max_eval_images", "num_workers", "cache_images", "strict"):
            d["data"].pop(k)
        return stable_hash(d)


def data_identity(data: dict) -> dict:
    """A run's ``data`` options as its identity holds them: without ``root`` (where the files
    are says nothing about them), and ``num_workers`` auto (null) as 0, the default before auto
    existed, so result files and baselines written then keep their hash (auto is 0 on
    SynthScenes, the same run: datamodules/loading.py)."""
    out = {k: v for k, v in data.items() if k != "root"}
    if "num_workers" in out and out["num_workers"] is None:
        out["num_workers"] = 0
    return out


#: options added after results and checkpoints were hashed: at their default they are left out of
#: the identity, so every earlier config keeps its hash (and its cached checkpoint); recorded in
#: the result file's config all the same
_HASHED_UNLESS_DEFAULT: tuple[tuple[str | None, str, object], ...] = (
    ("train", "gather_negatives", True),
    ("train", "grad_checkpointing", False),
    (None, "checkpoint", None),
    ("eval", "precision", None),
    ("eval", "storage_dtype", None),
    ("data", "global_batch_size", None),
)
#: ``data.batch_size`` when nobody set it (then ``data.global_batch_size`` decides it alone)
_DEFAULT_BATCH = DataConfig().batch_size
#: options that change how a run survives or where its data lives, never what it computes
_NOT_HASHED = (("train", "resume"), ("train", "checkpoint_every_n_steps"), ("eval", "memmap_min_mb"))


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- dict <-> dataclass ----------------------------------------------------------------
def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, naming any unknown or ill-typed key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown option '{prefix}{unknown[0]}'; valid options{' of ' + where if where else ''}: "
            + ", ".join(sorted(fields))
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("model_args", "task_args"):
            out[k] = deep_merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


_KEY_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_set(assignments: list[str], option: str = "--set") -> dict:
    """``["train.max_epochs=3", "model_args.width=64"]`` -> nested dict. A value is parsed as
    JSON (with :func:`datamodules.safe_json.loads_json`'s bounds) and taken as a plain string when
    it is not JSON (``model_args.pretrained=/x/y``), unless it starts like a JSON object or list
    (``{``, ``[``): then the JSON error is the message. A later assignment of the same key wins; a
    key that is both given a value and used as a section (``train=3`` and ``train.max_epochs=2``)
    is refused."""
    out: dict = {}
    origin: dict[tuple[str, ...], str] = {}  # key path -> the assignment that set it (for messages)
    for a in assignments:
        key, sep, raw = a.partition("=")
        parts = tuple(key.split("."))
        if not sep or not key or not all(_KEY_PART.match(p) for p in parts):
            raise ConfigError(
                f"{option} expects KEY=VALUE with KEY dot-separated option names "
                f"(e.g. train.max_epochs=3), got {a[:200]!r}"
            )
        try:
            value = loads_json(raw, f"{option} {key}")
        except JsonReadError as e:
            if not e.syntax or raw.lstrip().startswith(("{", "[")):  # an object or a list that does not parse
                raise ConfigError(str(e)) from None
            value = raw
        node = out
        for depth, p in enumerate(parts[:-1]):
            if p in node and not isinstance(node[p], dict):
                raise ConfigError(
                    f"{option} {a[:200]!r}: {'.'.join(parts[: depth + 1])} was set to a value by "
                    f"{origin[parts[: depth + 1]]!r}, so it cannot also hold options"
                )
            node = node.setdefault(p, {})
        last = parts[-1]
        if isinstance(node.get(last), dict) and node[last] and not isinstance(value, dict):
            raise ConfigError(
                f"{option} {a[:200]!r}: {key} already holds options set by "
                f"{next(v for k, v in origin.items() if k[: len(parts)] == parts)!r}; "
                f"give either {key}=VALUE or {key}.OPTION=VALUE"
            )
        node[last] = value
        origin[parts] = a[:200]
    return out


def load_override_file(path: Path) -> dict:
    """A ``--config`` file: a JSON object of run-config overrides, read safely."""
    try:
        data = read_json(path, what="--config file")
    except JsonReadError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config file {path}: must hold a JSON object of options, got {type(data).__name__}")
    return data


def model_defaults(model: str, size: str = "tiny") -> dict:
    """The shipped base config of a model: ``benchmark/configs/models/<model>.json`` (tiny), or
    its full-size recipe ``benchmark/configs/models/full/<model>.json`` at size "full" (the tiny
    file when it has none)."""
    if size not in SIZES:
        raise ConfigError(f"size must be one of {SIZES}, got {size!r}")
    folder = resources.files("benchmark") / "configs" / "models"
    for ref in ((folder / "full" / f"{model}.json",) if size == "full" else ()) + (folder / f"{model}.json",):
        if ref.is_file():
            try:
                return loads_json(ref.read_bytes(), f"model config {ref}")
            except JsonReadError as e:
                raise ConfigError(str(e)) from None
    return {"model": model}


def build_run_config(base: dict, *overrides: dict) -> RunConfig:
    merged = base
    for o in overrides:
        merged = deep_merge(merged, o)
    return from_dict(RunConfig, merged)
