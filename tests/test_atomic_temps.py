"""Concurrent checkpoint saves on one cache (real processes), and temporaries left by killed
runs removed by the next run (benchmark/atomic.py, datamodules/synthetic/generation.py). The
SIGKILLed generation itself is a probe in tests/test_probes_io.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.atomic import HOST, atomic_write_json, clean_stale_temps, save_atomically, temp_sibling
from datamodules.synthetic.generation import ensure_generated
from tests.kill_generation_script import OPTIONS

REPO = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_concurrent_saves_from_several_processes_never_fail(tmp_path):
    folder = tmp_path / "ckpt" / "model"
    n_proc, n_saves = 4, 40
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.concurrent_save_script", str(folder), f"w{k}", str(n_saves)],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(n_proc)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n_proc, outs
    assert [int(out.strip()) for out, _ in outs] == [0] * n_proc, outs  # no save failed (8 of 400 did before)
    tag = json.loads((folder / "config.json").read_text())["tag"]
    assert (folder / "weights.bin").read_bytes().rstrip(b".") == tag.encode()  # both files from one save
    assert sorted(p.name for p in folder.parent.iterdir()) == [".model.lock", "model"]  # no temporaries left


def test_save_replaces_an_existing_folder_whole(tmp_path):
    class Ckpt:
        def __init__(self, files):
            self.files = files

        def save_checkpoint(self, folder):
            for name, text in self.files.items():
                (Path(folder) / name).write_text(text)

    folder = tmp_path / "m"
    save_atomically(Ckpt({"a": "1", "old": "x"}), folder)
    save_atomically(Ckpt({"a": "2"}), folder)
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"a": "2"}

    class Broken:
        def save_checkpoint(self, folder):
            (Path(folder) / "a").write_text("partial")
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_atomically(Broken(), folder)
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"a": "2"}  # the saved one kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]


def _stale(target: Path, pid: int, host: str | None = HOST, folder: bool = True, tag: str = "deadbeef") -> Path:
    name = f".{target.name}.tmp-" + (f"{host}-" if host else "") + f"{pid}-{tag}"
    path = target.parent / name
    if folder:
        path.mkdir(parents=True)
        (path / "half.png").write_bytes(b"x")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    return path


def test_only_dead_processes_temporaries_of_this_host_are_removed(tmp_path):
    target, dead = tmp_path / "thing", dead_pid()
    gone = [_stale(target, dead), _stale(target, dead, host=None), _stale(target, dead, folder=False, tag="0123abcd")]
    kept = [
        _stale(target, os.getpid()),
        _stale(target, dead, host="otherhost"),
        tmp_path / f".{target.name}.tmp-notmine",
    ]
    kept[-1].mkdir()
    assert sorted(clean_stale_temps(target)) == sorted(gone)
    assert not any(p.exists() for p in gone) and all(p.exists() for p in kept)
    assert temp_sibling(target).name.startswith(f".thing.tmp-{HOST}-{os.getpid()}-")


def test_stale_temporaries_of_complete_caches_and_files_are_removed_too(tmp_path):
    final = ensure_generated(OPTIONS, tmp_path, workers=1)
    stale = _stale(final, dead_pid())
    ensure_generated(OPTIONS, tmp_path, workers=1)  # complete already: only the cleanup runs
    assert not stale.exists()
    result = tmp_path / "results" / "r.json"
    stale_file = _stale(result, dead_pid(), folder=False)
    atomic_write_json(result, {"a": 1})
    assert not stale_file.exists() and json.loads(result.read_text()) == {"a": 1}
    assert oct(result.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    ckpt = tmp_path / "ckpt" / "m"
    stale_ckpt = _stale(ckpt, dead_pid())
    save_atomically(type("C", (), {"save_checkpoint": lambda self, f: (Path(f) / "w").write_text("1")})(), ckpt)
    assert not stale_ckpt.exists() and (ckpt / "w").read_text() == "1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
