"""Peak resident memory per stage of a run: a background thread samples this process's RSS.

``tracemalloc`` does not see torch's allocations, and ``ru_maxrss`` gives one number for the
whole process. :class:`RssSampler` reads ``/proc/self/status`` (``VmRSS``, ``RssAnon``,
``RssFile``) every ``interval_s`` and keeps, per *stage label*, the largest value seen while
that label was current. The label is whatever :meth:`RssSampler.stage` returns at sampling time:
a callable given by the caller (e.g. the innermost timed function of a benchmark), so the stage
of the peak is known without instrumenting the code under test. Linux only (elsewhere the
sampler records nothing and says so).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

_STATUS = Path("/proc/self/status")
_FIELDS = {"VmRSS:": "rss_bytes", "RssAnon:": "anon_bytes", "RssFile:": "file_bytes"}


def read_rss() -> dict[str, int]:
    """Current ``VmRSS``, ``RssAnon`` and ``RssFile`` of this process in bytes (empty off Linux)."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        key = line.split(None, 1)[0] if line else ""
        if key in _FIELDS:
            out[_FIELDS[key]] = int(line.split()[1]) * 1024  # kB
    return out


class RssSampler:
    """Samples RSS every ``interval_s`` seconds in a daemon thread while in a ``with`` block.

    ``stage()`` names the current stage. :attr:`peaks` maps a stage to the sample with the
    largest ``rss_bytes`` seen in it (``rss_bytes``, ``anon_bytes``, ``file_bytes``); :attr:`order`
    lists the stages in the order first seen.
    """

    def __init__(self, stage: Callable[[], str], interval_s: float = 0.1) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s}")
        self.stage = stage
        self.interval_s = float(interval_s)
        self.peaks: dict[str, dict[str, int]] = {}
        self.order: list[str] = []
        self.available = bool(read_rss())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample now (also called by the thread)."""
        values = read_rss()
        if not values:
            return
        label = self.stage()
        best = self.peaks.get(label)
        if best is None:
            self.order.append(label)
        if best is None or values["rss_bytes"] > best["rss_bytes"]:
            self.peaks[label] = values

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        if self.available:
            self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def report(self) -> list[dict[str, int | str]]:
        """The per-stage peaks in first-seen order: ``[{"stage": ..., "rss_bytes": ...}, ...]``."""
        return [{"stage": s, **self.peaks[s]} for s in self.order]
