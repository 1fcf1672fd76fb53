"""The transcript of a feedback run: one JSON object per query, as JSON Lines, written atomically.

Lines go to a temporary file beside the target as they come (memory stays flat over
thousands of queries); on success the file is flushed, synced and renamed into place, so a
failed or interrupted run never leaves a truncated transcript nor replaces a good one.
Each line: ``query_index``, ``query``, ``caption``, ``target_image_id``, ``n_relevant``
and ``arms``: ``{arm: {"ranks": [rank at round 0..T], "rounds": [{"round": r, "shown":
[image ids], "ps": [...], "ns": [...]} ...]}}`` (the graded user adds ``unsure`` and each
shown item's ``closeness``); for the llm arm each round also holds
``questions`` (question, options, answer), ``refined_query`` and ``fallback`` (the failure
reason, or null).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO


class JsonlWriter:
    """``with JsonlWriter(path) as w: w.write(obj)`` -- the file appears only on success."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.count = 0
        self._file: TextIO | None = None
        self._tmp: str | None = None

    def __enter__(self) -> JsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._file = os.fdopen(fd, "w", encoding="utf-8")
        return self

    def write(self, obj: dict[str, Any]) -> None:
        assert self._file is not None, "use JsonlWriter as a context manager"
        self._file.write(json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n")
        self.count += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._file is not None and self._tmp is not None
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            Path(self._tmp).unlink(missing_ok=True)  # gone already after a successful rename
