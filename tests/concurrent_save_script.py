"""Run by tests/test_atomic_temps.py in several processes at once: ``save_atomically`` of a
small two-file "checkpoint" into the same folder, many times; prints the number of failures.

Usage: python -m tests.concurrent_save_script FOLDER WRITER_ID N
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmark.atomic import save_atomically


class Checkpoint:
    """Writes ``weights.bin`` (64 kB naming the writer and the save) and ``config.json``."""

    def __init__(self, writer: str, n: int) -> None:
        self.writer, self.n = writer, n

    def save_checkpoint(self, folder: Path) -> None:
        tag = f"{self.writer}:{self.n}"
        (Path(folder) / "weights.bin").write_bytes(tag.encode().ljust(65536, b"."))
        (Path(folder) / "config.json").write_text(f'{{"tag": "{tag}"}}')


def main() -> None:
    folder, writer, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    failures = 0
    for i in range(n):
        try:
            save_atomically(Checkpoint(writer, i), folder)
        except OSError as e:
            failures += 1
            print(f"failure: {e}", file=sys.stderr)
    print(failures)


if __name__ == "__main__":
    main()
