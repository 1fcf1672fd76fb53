"""The one builder of run configs from command-line flags, used by every command that runs
models (``bench run``, ``feedback``, ``ablate``, ``vqa``, ``regress``, ``reproduce``).

Precedence, lowest first (a later layer overrides an earlier one, key by key):

1. the model's shipped base config (``benchmark/configs/models/[full/]<model>.json``);
2. the command's flags at their default values (``--seed 0``, ``--tag default``, ...);
3. the ``--config FILE`` (a JSON object of run-config options);
4. the flags given explicitly on the command line;
5. the ``--set KEY.PATH=VALUE`` overrides, in order.

So a flag overrides the file only when it is given: ``--config f.json`` with ``{"seed": 5}``
runs seed 5, and ``--config f.json --seed 7`` runs seed 7. Whether a flag was given is
the ``ParameterSource`` of the parameter (click's, as vendored by typer) (``COMMANDLINE`` or ``ENVIRONMENT``), so the
help keeps showing the real defaults. The model (and the size, which picks the full-size
recipe) whose base config is layer 1 is the one the other layers end up naming; an unknown
model, dataset or task name is refused with the registered names listed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import RunConfig, build_run_config, deep_merge, load_override_file, model_defaults, parse_set
from benchmark.registry import DATASETS, MODELS, TASKS, UnknownNameError

#: CLI flag (the command function's parameter name) -> the run-config key it sets
FLAG_KEYS = {
    "model": "model",
    "dataset": "dataset",
    "size": "size",
    "tag": "tag",
    "task": "task",
    "seed": "seed",
    "results_dir": "results_dir",
    "cache_dir": "cache_dir",
    "checkpoint": "checkpoint",
    "epochs": "train.max_epochs",
    "devices": "train.devices",
    "strategy": "train.strategy",
    "resume": "train.resume",
    "data_root": "data.root",
    "strict": "data.strict",
    "pretrained": "model_args.pretrained",
}


def flag_overrides(values: dict[str, Any]) -> dict:
    """``{flag: value}`` -> nested run-config overrides (None = not set; paths as strings)."""
    out: dict = {}
    for flag, value in values.items():
        if value is None:
            continue
        *sections, key = FLAG_KEYS[flag].split(".")
        node = out
        for s in sections:
            node = node.setdefault(s, {})
        node[key] = str(value) if isinstance(value, Path) else value
    return out


def _given(ctx: Any, name: str) -> bool:
    """Whether ``name`` was given (by name: typer vendors its own click, whose enum is not click's)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


@dataclass(frozen=True)
class CliConfig:
    """A command's run-config inputs: its flags (split into given and defaulted), its
    ``--config`` file and its ``--set`` overrides."""

    given: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    config: Path | None = None
    sets: tuple[str, ...] = ()

    @classmethod
    def from_context(
        cls, ctx: Any, *, config: Path | None = None, sets: Sequence[str] | None = None, **flags: Any
    ) -> CliConfig:
        """``flags`` are the command's run-config flags (names of :data:`FLAG_KEYS`) with their
        values; ``ctx`` (the click/typer context) tells which were given on the command line."""
        given = {k: v for k, v in flags.items() if ctx is not None and _given(ctx, k)}
        return cls(given, {k: v for k, v in flags.items() if k not in given}, config, tuple(sets or ()))

    def layers(self, extra: dict | None = None) -> list[dict]:
        """The override layers above the model's base config, lowest first (``extra``: options
        the command fixes, at the level of the given flags)."""
        given = deep_merge(flag_overrides(self.given), extra or {})
        file = load_override_file(self.config) if self.config is not None else {}
        return [flag_overrides(self.defaults), file, given, parse_set(list(self.sets))]

    def build(self, extra: dict | None = None) -> RunConfig:
        """The run config: the model's base config (of the model and size the layers name),
        then :meth:`layers`."""
        layers = self.layers(extra)
        top = {
            k: next((layer[k] for layer in reversed(layers) if k in layer), None)
            for k in ("model", "size", "dataset", "task")
        }
        for kind, registry in (("model", MODELS), ("dataset", DATASETS), ("task", TASKS)):
            name = top[kind]
            if (kind == "model" or name is not None) and (not isinstance(name, str) or name not in registry):
                raise UnknownNameError(kind, str(name), registry.names())
        model, size = top["model"], top["size"]
        assert isinstance(model, str)  # checked against the registry just above
        from_checkpoint = _checkpoint_layer(layers)
        size = from_checkpoint.get("size", size)
        base = model_defaults(model, size) if size == "full" else model_defaults(model)
        return build_run_config(base, *layers, from_checkpoint)


def _checkpoint_layer(layers: list[dict]) -> dict:
    """A given ``--checkpoint`` built from a pretrained model (its saved config names one) is a
    full-size checkpoint: unless a size is given, the run is full size (its recipe's evaluation
    settings), and ``model_args.pretrained`` defaults to the checkpoint's base, recorded as such."""
    checkpoint = next((layer["checkpoint"] for layer in reversed(layers) if layer.get("checkpoint")), None)
    base = saved_pretrained(Path(checkpoint)) if checkpoint else None
    if not base:
        return {}
    size_given = any("size" in layer for layer in layers[1:])  # layers[0]: the flags at their defaults
    pretrained_given = any("pretrained" in layer.get("model_args", {}) for layer in layers)
    extra: dict = {} if size_given else {"size": "full"}
    if not pretrained_given:
        extra["model_args"] = {"pretrained": base}
    return extra


def saved_pretrained(folder: Path) -> str | None:
    """The ``pretrained`` base named by a suite checkpoint folder's saved model config, or None (a
    tiny checkpoint, or no readable config: loading it reports that)."""
    from lightning_modules.blip2 import CONFIG_FILE

    try:
        value = json.loads((folder / CONFIG_FILE).read_text()).get("pretrained")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None
