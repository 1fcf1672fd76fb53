"""``scripts/bench_spill.py`` runs both arms side by side and reports their memory and ranks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_spill.py"


@pytest.mark.parametrize("target", ["eval", "feedback"])
def test_both_arms_run_and_give_the_same_ranks(capsys, target):
    load_script(SCRIPT).main(
        ["--n", "300", "--tokens", "9", "--queries", "50", "--k", "4", "--batch", "64", "--target", target]
    )
    out = capsys.readouterr().out
    assert "| memory |" in out and "| spill |" in out
    assert "same ranks: True" in out


def test_bounds_are_checked():
    with pytest.raises(SystemExit):
        load_script(SCRIPT).parse_args(["--k", "0"])
