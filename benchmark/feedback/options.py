"""``bench feedback`` flags -> FeedbackConfig, validated.

The run config is built by the builder every command shares (``benchmark/run_flags.py``:
model base config, ``--config`` file, CLI flags, ``--set`` overrides), so the model is the one
``bench run`` trains and caches for the same flags. The feedback config comes from its own flags (``--rounds``,
``--display``, ``--mode``, ``--llm``, ``--llm-model``, ``--max-queries``), then
``--feedback-set key.path=value`` overrides (e.g. ``refresh.w_ns=0.5``, ``llm.alpha=0.3``,
``llm.timeout_s=10``). Unknown keys and wrong types raise a ConfigError naming them.
"""

from __future__ import annotations

from typing import Any

from benchmark.config import ConfigError, deep_merge, from_dict, parse_set
from benchmark.feedback.config import MODES, FeedbackConfig


def feedback_config(
    *, rounds: int, display: int, mode: str, llm: str, llm_model: str | None, max_queries: int | None, sets: list[str]
) -> FeedbackConfig:
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    flags: dict[str, Any] = {
        "rounds": rounds,
        "display": display,
        "arms": list(MODES[mode]),
        "max_queries": max_queries,
        "llm": {"backend": llm},
    }
    if llm_model is not None:
        flags["llm"]["model"] = llm_model
    extra = parse_set(sets, "--feedback-set")
    return from_dict(FeedbackConfig, deep_merge(flags, extra), "feedback")
