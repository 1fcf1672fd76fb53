"""Atomic writes: files (bytes, text, JSON) and whole folders (model checkpoints), each
written under a temporary name beside the target, then renamed into place.

Result files, reports and figures go through here: a write that fails half-way never leaves
a truncated file nor replaces a good one, and the file gets the permissions a plain ``open``
would give (``mkstemp`` alone makes it private).

Temporary names say who made them: ``.<target name>.tmp-<host>-<pid>-<random>``. A run that
is killed cannot remove its temporaries; the next write of the same target removes those of
this host whose process is gone (:func:`clean_stale_temps`; a live process's, or another
host's on a shared disk, are left alone). The SynthScenes generator names and cleans its
temporary folder the same way.

Concurrent processes may save the same checkpoint folder (two runs of one config on one
cache): :func:`save_atomically` writes each into its own temporary folder, then swaps it in
under an exclusive ``fcntl.flock`` on the sibling ``.<name>.lock`` (the old folder renamed
aside, the new one renamed in, the old one removed), so no swap sees another half done.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: this host's name as used in temporary names (characters other than letters, digits, '.', '_' -> '_')
HOST = re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname()) or "host"


def temp_sibling(target: Path) -> Path:
    """A fresh temporary name beside ``target``, naming this host and process."""
    target = Path(target)
    return target.parent / f".{target.name}.tmp-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner_pid(name: str, prefix: str) -> int | None:
    """The pid in a temporary name of this host (also the older ``<pid>-<hex8>`` form, no host)."""
    rest = name[len(prefix) :]
    m = re.fullmatch(rf"(?:{re.escape(HOST)}-)?(\d+)-[0-9a-f]{{8}}", rest)
    return int(m.group(1)) if m else None


def clean_stale_temps(target: Path) -> list[Path]:
    """Remove the temporaries of ``target`` (files or folders) left by dead processes of
    this host; the removed paths."""
    target = Path(target)
    prefix = f".{target.name}.tmp-"
    removed: list[Path] = []
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:  # no parent folder yet: nothing to clean
        return removed
    for path in candidates:
        pid = _owner_pid(path.name, prefix)
        if pid is None or _pid_alive(pid):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``.<target name>.lock`` beside ``target`` for the block."""
    target = Path(target)
    fd = os.open(target.parent / f".{target.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def replace_folder(src: Path, dst: Path) -> None:
    """Move the folder ``src`` to ``dst``, replacing a folder there (hold :func:`locked` on ``dst``)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() or dst.is_symlink():
        old = temp_sibling(dst)
        os.replace(dst, old)  # aside first: readers see the old folder or the new one, for all but an instant
        os.replace(src, dst)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(src, dst)


def save_atomically(model: Any, directory: Path) -> None:
    """``model.save_checkpoint(folder)`` into a temporary folder, then swapped in as
    ``directory`` under its lock (safe with concurrent savers; see the module docstring)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(directory)
    tmp = temp_sibling(directory)
    tmp.mkdir()
    try:
        model.save_checkpoint(tmp)
        with locked(directory):
            replace_folder(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The permissions a plain ``open`` gives a new file (0o666 less the umask)."""
    return 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, with the permissions a plain ``open`` would give."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = temp_sibling(path)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, plain_file_mode())  # created private, like mkstemp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> Path:
    """``data`` as strict JSON (NaN and infinities refused), one space of indent, final newline."""
    return atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")
