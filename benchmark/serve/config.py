"""Options of ``bench serve``: where it listens and what a page shows, validated on construction.

The run config (model, dataset, checkpoint) and the feedback config (refresh weights, the
LLM-guided round) are the suite's own (:mod:`benchmark.run_flags`,
:mod:`benchmark.feedback.options`); this holds only what is particular to the server.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from benchmark.config import ConfigError

MAX_PORT = 65535
#: the most results a page may ask for (thumbnails per answer)
MAX_TOP_K = 100
#: the longest query accepted, in characters (the LLM refiner's own bound is feedback.llm.max_query_chars)
MAX_QUERY_CHARS = 1000
#: searches kept in memory per server (the oldest is dropped first)
MAX_SEARCHES_LIMIT = 100_000


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """host: address to bind (default loopback; another one is served with a warning).
    port: TCP port in [0, 65535]; 0 = a free port chosen by the system (printed at start).
    top_k: results shown per search and round, in [1, 100].
    max_searches: searches kept in memory (the oldest is forgotten first), in [1, 100000].
    thumbnail_px: longest side of a served thumbnail, in [16, 1024].
    train: train the model now when no checkpoint is cached (as ``bench run`` does); False
      reports the command that trains it instead.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    top_k: int = 8
    max_searches: int = 1000
    thumbnail_px: int = 160
    train: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip() or any(c.isspace() for c in self.host):
            raise ConfigError(f"--host must be a host name or IP address, got {self.host!r}")
        for name, low, high in (
            ("port", 0, MAX_PORT),
            ("top_k", 1, MAX_TOP_K),
            ("max_searches", 1, MAX_SEARCHES_LIMIT),
            ("thumbnail_px", 16, 1024),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                if isinstance(value, float) and math.isnan(value):
                    value = "NaN"
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer in [{low}, {high}], got {value}")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)
