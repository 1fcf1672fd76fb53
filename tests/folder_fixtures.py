"""Small user folders for the ``folder`` dataset, written by the tests: PNGs + JSONL or CSV.

:func:`write_folder` writes ``n_images`` small PNGs under ``<root>/photos/<kind>/`` and one
annotation file with two captions per image (the second of every third image with its own
``instruction``), optionally ``group`` ids (``n_per_group`` images per group), a ``split``
column (by group: a group's images share a split), and one truncated (corrupt) PNG. It returns the rows it wrote, so tests can derive
what a reader must find.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tests.fixtures_real import WORDS, write_png

KINDS = ("street", "beach", "kitchen", "park")


def folder_rows(n_images: int = 36, *, groups: bool = True, split: bool = False, n_per_group: int = 3) -> list[dict]:
    rows = []
    for i in range(n_images):
        image = f"photos/{KINDS[i % len(KINDS)]}/img_{i:03d}.png"
        for k in range(2):
            row = {"image": image, "caption": f"{WORDS[(i + k) % len(WORDS)]} in picture {i} take {k}"}
            if k == 1 and i % 3 == 0:
                row["instruction"] = f"please find picture {i} with {WORDS[i % len(WORDS)]}"
            if groups:
                row["group"] = f"g{i // n_per_group}"
            if split:
                row["split"] = ("train", "train", "train", "val", "test")[(i // n_per_group) % 5]  # whole groups
            rows.append(row)
    return rows


def write_annotations(root: Path, rows: list[dict], fmt: str = "jsonl", name: str | None = None) -> Path:
    path = root / (name or f"annotations.{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def write_folder(
    root: Path,
    n_images: int = 36,
    *,
    fmt: str = "jsonl",
    groups: bool = True,
    split: bool = False,
    corrupt: int | None = None,
    n_per_group: int = 3,
    size: tuple[int, int] = (24, 20),
) -> list[dict]:
    """Write the folder (see the module docstring); ``corrupt``: index of the image written truncated."""
    rows = folder_rows(n_images, groups=groups, split=split, n_per_group=n_per_group)
    for i, image in enumerate(dict.fromkeys(r["image"] for r in rows)):
        path = root / image
        write_png(path, (size[0] + i % 5, size[1] + i % 3), seed=i, mode="L" if i % 7 == 3 else "RGB")
        if i == corrupt:
            path.write_bytes(path.read_bytes()[:40])
    write_annotations(root, rows, fmt)
    return rows
