"""Backend specs -> backends: ``rules``, ``hf:<hub id or local path>``, ``openai:<base url>``.

A spec's prefix (before the first ``:``) selects a registered entry; the entry checks the
rest of the spec without side effects (config validation) and builds the backend lazily
(``hf`` imports transformers only when built). Building may fail on bad input (a model
folder that does not exist): that is a :class:`~benchmark.config.ConfigError` naming
``--llm``, reported before any work starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from benchmark.config import ConfigError
from benchmark.feedback.llm.redact import redact_text

if TYPE_CHECKING:
    from benchmark.feedback.config import LLMConfig
    from benchmark.feedback.llm.base import LLMBackend


def _no_argument(spec: str) -> None:
    if spec != "rules":
        raise ConfigError(f"--llm {spec!r}: the rules backend takes no argument (use 'rules')")


def _needs_path(spec: str) -> None:
    if not spec.partition(":")[2].strip():
        raise ConfigError(f"--llm {spec!r}: expected hf:<hub id or local path>")


def _needs_url(spec: str) -> None:
    try:
        url = urlparse(spec.partition(":")[2])
        ok = url.scheme in ("http", "https") and bool(url.hostname) and (url.port is None or url.port > 0)
    except ValueError:  # a bad port or IPv6 literal
        ok = False
    if not ok:
        raise ConfigError(
            f"--llm {redact_text(spec)!r}: expected openai:<base url>, e.g. openai:http://127.0.0.1:8000/v1"
        )


@dataclass(frozen=True)
class BackendEntry:
    usage: str
    target: str  # "module:class"; the class has from_spec(spec, config)
    check_spec: Callable[[str], None]

    def build(self, spec: str, config: LLMConfig) -> LLMBackend:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name).from_spec(spec, config)


BACKENDS: dict[str, BackendEntry] = {
    "rules": BackendEntry("rules", "benchmark.feedback.llm.rules:RulesBackend", _no_argument),
    "hf": BackendEntry("hf:<hub id or local path>", "benchmark.feedback.llm.hf:HFBackend", _needs_path),
    "openai": BackendEntry("openai:<base url>", "benchmark.feedback.llm.openai_compat:OpenAICompatBackend", _needs_url),
}


def make_backend(config: LLMConfig) -> LLMBackend:
    """The backend named by ``config.backend`` (already checked by :class:`LLMConfig`)."""
    return BACKENDS[config.backend.split(":", 1)[0]].build(config.backend, config)
