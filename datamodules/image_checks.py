"""The setup-time image check of the real datasets, in threads, with an on-disk cache of verdicts.

Every image of a split a run uses is checked once (:func:`~datamodules.base.check_image`:
missing, or not decodable to the end). Decoding all of COCO takes minutes on one core, so
the verdicts are kept in a small JSON file per dataset folder,
``<cache>/image_checks/<sha256(resolved data root, dataset)[:16]>.json``, keyed by the
image's path relative to the data root, with its size and ``mtime_ns``: an image whose size
or modification time changed is checked again; an unchanged one is not opened. Only
readable images are cached: a missing or unreadable one is checked, and reported, on every
run -- there are few, and a transient read error or a file restored with its old mtime
must not stay "unreadable". The file
is written atomically (temporary name + rename) after merging what another process wrote
meanwhile, so concurrent runs and ranks can share it; an unreadable or foreign cache file is
ignored (every image checked again) and replaced.

Where the check runs (``RetrievalDataModule.prepare_data``, once per node on local rank 0
under Lightning; ``setup`` on every rank then reads the verdicts): see ``datamodule.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmark.atomic import atomic_write_json
from datamodules import base
from datamodules.loading import usable_cpus

log = logging.getLogger(__name__)

#: bump when ``check_image`` changes what it accepts: older verdicts are then ignored
CHECK_VERSION = 1
FORMAT = "instructsee-image-checks"
#: threads decode in parallel (PIL releases the GIL) and overlap file-system latency;
#: more than this gains nothing on one disk
MAX_THREADS = 16
#: below this many images the check runs in the calling thread; threads take chunks of at
#: most this many (fewer for short lists, so that every thread gets work)
MIN_THREADED = 64
MAX_CHUNK = 256

Entry = tuple[int, int]  # size, mtime_ns of an image that decoded


def check_threads(requested: int | None = None) -> int:
    """``requested`` threads (1..:data:`MAX_THREADS`), or the usable CPUs up to that bound."""
    if requested is None:
        return min(MAX_THREADS, usable_cpus())
    if not 1 <= requested <= MAX_THREADS:
        raise ValueError(f"image check threads must be in [1, {MAX_THREADS}], got {requested}")
    return requested


class ImageCheckCache:
    """The cached verdicts of one dataset folder (see the module docstring)."""

    def __init__(self, directory: Path, root: Path, dataset: str) -> None:
        self.root = Path(root).resolve()
        self.dataset = dataset
        digest = hashlib.sha256(f"{self.root}\n{dataset}".encode()).hexdigest()[:16]
        self.path = Path(directory) / f"{digest}.json"
        self._given_root = os.path.join(str(Path(root)), "")  # as the dataset builds its paths, with a final "/"

    def key(self, path: Path) -> str:
        """``path`` relative to the data root (POSIX form); its absolute form if outside it."""
        text = str(path)
        if text.startswith(self._given_root) and os.sep == "/":  # the common case, without pathlib's cost
            return text[len(self._given_root) :]
        path = Path(path)
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            pass
        absolute = path.resolve()
        try:
            return absolute.relative_to(self.root).as_posix()
        except ValueError:
            return str(absolute)

    def load(self) -> dict[str, Entry]:
        """The stored verdicts; empty (with a warning) when the file is unreadable or not ours."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("image check cache %s is unreadable (%s): checking every image again", self.path, e)
            return {}
        if (
            not isinstance(doc, dict)
            or doc.get("format") != FORMAT
            or doc.get("version") != CHECK_VERSION
            or not isinstance(doc.get("entries"), dict)
        ):
            log.warning(
                "image check cache %s is not a version %d cache: checking every image again", self.path, CHECK_VERSION
            )
            return {}
        out: dict[str, Entry] = {}
        for key, value in doc["entries"].items():
            if isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
                out[key] = (value[0], value[1])
        return out

    def save(self, new: dict[str, Entry]) -> None:
        """Store ``new`` verdicts, merged over what the file holds now (written atomically)."""
        if not new:
            return
        entries = self.load() | new
        atomic_write_json(
            self.path,
            {
                "format": FORMAT,
                "version": CHECK_VERSION,
                "root": str(self.root),
                "dataset": self.dataset,
                "entries": {k: list(v) for k, v in sorted(entries.items())},
            },
        )


def _verdict(path: Path, key: str | None, known: dict[str, Entry]) -> tuple[str | None, Entry | None]:
    """``(reason, new cache entry or None)`` for one image: readable without opening it when the
    cache knows it with the same size and mtime, else a fresh :func:`~datamodules.base.check_image`
    (a cache entry if it decodes)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing", None
    if not stat.S_ISREG(st.st_mode):
        return "missing", None  # as check_image: not a file
    if key is not None:
        cached = known.get(key)
        if cached is not None and cached == (st.st_size, st.st_mtime_ns):
            return None, None
    reason = base.check_image(path)
    return reason, (st.st_size, st.st_mtime_ns) if reason is None else None


def check_images(
    paths: Sequence[Path], threads: int | None = None, cache: ImageCheckCache | None = None, reuse: bool = True
) -> list[str | None]:
    """:func:`~datamodules.base.check_image` over many paths, in threads; one reason or ``None``
    per path, in order. With ``cache``, unchanged images known to be readable are not opened
    (unless ``reuse`` is False), and the images found readable now are stored."""
    if not paths:
        return []
    known = cache.load() if cache is not None and reuse else {}
    keys = [cache.key(p) for p in paths] if cache is not None else [None] * len(paths)
    n_threads = check_threads(threads)

    def run(lo: int, hi: int) -> list[tuple[str | None, Entry | None]]:
        return [_verdict(paths[i], keys[i], known) for i in range(lo, hi)]

    if n_threads == 1 or len(paths) < MIN_THREADED:
        out = run(0, len(paths))
    else:
        chunk = max(1, min(MAX_CHUNK, len(paths) // (4 * n_threads)))
        with ThreadPoolExecutor(n_threads) as pool:
            chunks = pool.map(lambda lo: run(lo, min(lo + chunk, len(paths))), range(0, len(paths), chunk))
            out = [v for chunk in chunks for v in chunk]
    if cache is not None:
        new = {k: entry for k, (_, entry) in zip(keys, out, strict=True) if k is not None and entry is not None}
        if new:
            cache.save(new)
            log.info(
                "%d of %d images checked and readable (the others unchanged since %s, or not readable)",
                len(new),
                len(paths),
                cache.path,
            )
    return [reason for reason, _ in out]
