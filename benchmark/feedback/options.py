"""``bench feedback`` flags -> (RunConfig, FeedbackConfig), validated.

The run config is built exactly as ``bench run`` builds it (model base config, ``--config``
file, CLI flags, ``--set`` overrides), so the model is the one ``bench run`` trains and
caches for the same flags. The feedback config comes from its own flags (``--rounds``,
``--display``, ``--mode``, ``--llm``, ``--llm-model``, ``--max-queries``), then
``--feedback-set key.path=value`` overrides (e.g. ``refresh.w_ns=0.5``, ``llm.alpha=0.3``,
``llm.timeout_s=10``). Unknown keys and wrong types raise a ConfigError naming them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.config import (
    ConfigError,
    RunConfig,
    build_run_config,
    deep_merge,
    from_dict,
    load_override_file,
    model_defaults,
    parse_set,
)
from benchmark.feedback.config import MODES, FeedbackConfig


def run_config(*, model: str, dataset: str, size: str, tag: str, seed: int, epochs: int | None,
               data_root: Path | None, pretrained: str | None, config: Path | None, sets: list[str],
               results_dir: Path, cache_dir: Path | None) -> RunConfig:
    cli: dict[str, Any] = {"model": model, "dataset": dataset, "size": size, "tag": tag, "seed": seed,
                           "results_dir": str(results_dir)}
    if cache_dir is not None:
        cli["cache_dir"] = str(cache_dir)
    if epochs is not None:
        cli["train"] = {"max_epochs": epochs}
    if data_root is not None:
        cli["data"] = {"root": str(data_root)}
    if pretrained is not None:
        cli["model_args"] = {"pretrained": pretrained}
    overrides = [load_override_file(config)] if config else []
    return build_run_config(model_defaults(model), *overrides, cli, parse_set(sets))


def feedback_config(*, rounds: int, display: int, mode: str, llm: str, llm_model: str | None,
                    max_queries: int | None, sets: list[str]) -> FeedbackConfig:
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    flags: dict[str, Any] = {"rounds": rounds, "display": display, "arms": list(MODES[mode]),
                             "max_queries": max_queries, "llm": {"backend": llm}}
    if llm_model is not None:
        flags["llm"]["model"] = llm_model
    extra = parse_set(sets)
    return from_dict(FeedbackConfig, deep_merge(flags, extra), "feedback")
