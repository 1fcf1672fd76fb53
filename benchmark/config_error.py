"""The error of a bad option (:class:`ConfigError`), in a module of its own so that torch-free
code (the ablation folders) raises it without importing :mod:`benchmark.config`, which pulls
in Lightning."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad option: the message names the option and what was expected."""
