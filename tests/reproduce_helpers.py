"""The ``bench reproduce`` arguments of the small end-to-end tests."""

from __future__ import annotations

from pathlib import Path

SMALL_DATA = 'data.options={"n_train": 64, "n_val": 16, "n_test": 24}'


def small_reproduce(tmp_path: Path, *options: str) -> list[str]:
    """``bench reproduce OPTIONS`` on a small SynthScenes: results, reports and cache under
    ``tmp_path``, 1 epoch, batch 32, 200 bootstrap resamples, no cost measurement."""
    return [
        "reproduce",
        *options,
        "--results-dir",
        str(tmp_path / "results"),
        "--out-dir",
        str(tmp_path / "reports"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--bootstrap",
        "200",
        "--set",
        SMALL_DATA,
        "--set",
        "data.batch_size=32",
        "--set",
        "train.max_epochs=1",
        "--set",
        "eval.measure=false",
    ]
