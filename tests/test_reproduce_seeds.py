"""``bench reproduce --seeds N``: the claims' runs at the extra seeds (tags that do not clash,
shared steps per seed), bounds, and a small end to end run of the conditioning ablation at two
seeds whose report gives the claim at each seed (slow)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.config import ConfigError
from benchmark.reporting.claims import CLAIMS
from benchmark.reproduce.plan import MAX_SEEDS, build_plan, claim_runs, extra_seeds
from benchmark.reproduce.steps import RunStep, SharedStep
from tests.reproduce_helpers import small_reproduce

runner = CliRunner()


def _plan(tmp_path, *overrides: dict, **kw):
    return build_plan(
        list(overrides),
        results_dir=tmp_path / "results",
        out_dir=tmp_path / "reports",
        cache_dir=tmp_path / "cache",
        **kw,
    )


def test_one_seed_is_the_plain_plan(tmp_path):
    one, default = _plan(tmp_path, seeds=1), _plan(tmp_path)
    assert one == default and default.seeds == (0,)
    assert "seed" not in default.describe()


def test_extra_seeds_rerun_exactly_the_claims_runs(tmp_path):
    plan = _plan(tmp_path, {"seed": 5}, seeds=3)
    assert plan.seeds == (5, 6, 7) and "seeds 5, 6, 7" in plan.describe()
    base = [s for s in plan.steps if not any(sel.startswith("seed") for sel in s.selectors)]
    models, speed, matched, ablations = claim_runs()
    assert models == ["blip2", "ours"] and speed and ablations == ["conditioning", "qformer", "qscaler"]
    assert matched == [("ours", "blip2")]
    assert {c for claim in CLAIMS.values() for c in claim.ablations} == set(ablations)
    for seed in (6, 7):
        at = [s for s in plan.steps if f"seed{seed}" in s.selectors]
        runs = sorted(
            (s.config.model, s.config.task, s.config.tag, s.config.seed) for s in at if isinstance(s, RunStep)
        )
        assert runs == sorted(
            [
                ("blip2", "retrieval", f"default-seed{seed}", seed),
                ("ours", "retrieval", f"default-seed{seed}", seed),
                ("ours", "speed", f"default-seed{seed}", seed),
                ("blip2", "retrieval", f"matched-ours-seed{seed}", seed),
                ("ours", "retrieval", f"ablate-conditioning-without-seed{seed}", seed),
                ("ours", "retrieval", f"ablate-qformer-frozen-seed{seed}", seed),
                ("ours", "retrieval", f"ablate-qscaler-without-seed{seed}", seed),
            ]
        )
        # every default arm is the plain run of ours at that seed, shared
        shared = [s for s in at if isinstance(s, SharedStep)]
        assert {s.title for s in shared} == {
            f"ours (ablation {a}: {arm}, seed {seed})"
            for a, arm in (("conditioning", "with"), ("qformer", "trainable"), ("qscaler", "with"))
        }
        assert all(plan.steps[s.same_as].title == f"ours, seed {seed}" for s in shared)
    files = [s.config.result_path() for s in plan.steps if isinstance(s, RunStep)]
    assert len(files) == len(set(files))  # no two runs write the same result file
    assert len(base) + 2 * 10 == len(plan.steps)  # 7 runs + 3 shared arms per extra seed
    assert [s.title for s in _plan(tmp_path, seeds=2, only=["seed1"]).steps][:2] == ["blip2, seed 1", "ours, seed 1"]


@pytest.mark.parametrize("n", [0, MAX_SEEDS + 1, -1])
def test_seeds_out_of_bounds_are_refused(n):
    with pytest.raises(ConfigError, match=rf"--seeds must be an integer in \[1, {MAX_SEEDS}\], got {n}"):
        extra_seeds(0, n)
    with pytest.raises(ConfigError, match="passes the largest seed"):
        extra_seeds(2**32 - 1, 2)
    assert extra_seeds(3, 4) == [4, 5, 6]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "--seeds must be an integer in [1, 20], got 0"),
        (["--seeds", "2", "--size", "full"], "--seeds: only with --size tiny"),
    ],
)
def test_bad_seeds_exit_2_before_anything_runs(tmp_path, args, message):
    res = runner.invoke(app, ["reproduce", "--results-dir", str(tmp_path / "r"), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_conditioning_at_two_seeds_end_to_end(tmp_path):
    """``--seeds 2 --only conditioning,report`` on a small SynthScenes: per seed one training of ours
    (with CLIP and BLIP2 before it) whose checkpoint both arms use; the claims report gives the
    conditioning claim at each seed and across them, the ablation report its ΔR@1 and ΔR@5."""
    res = runner.invoke(
        app,
        small_reproduce(tmp_path, "--seeds", "2", "--only", "conditioning,report"),
    )
    assert res.exit_code == 0, res.output
    assert "seeds 0, 1" in res.output
    runs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json")}
    assert set(runs) == {
        "ours__synthetic__ablate-conditioning-with",
        "ours__synthetic__ablate-conditioning-without",
        "ours__synthetic__ablate-conditioning-with-seed1",
        "ours__synthetic__ablate-conditioning-without-seed1",
    }
    for suffix, seed in (("", 0), ("-seed1", 1)):
        with_c = runs[f"ours__synthetic__ablate-conditioning-with{suffix}"]
        without = runs[f"ours__synthetic__ablate-conditioning-without{suffix}"]
        assert with_c["seed"] == without["seed"] == seed
        assert [with_c["model_config"]["itm_conditioning"], without["model_config"]["itm_conditioning"]] == [
            True,
            False,
        ]
        # one checkpoint: trained by the first arm, loaded by the second
        assert with_c["provenance"]["checkpoint"] == without["provenance"]["checkpoint"]
        assert with_c["provenance"]["trained_this_run"] and not without["provenance"]["trained_this_run"]
        # the first stage (ITC) is the same; only the re-ranked top k differs
        assert with_c["metrics"]["itc/t2i/R@5"] == without["metrics"]["itc/t2i/R@5"]
    ckpts = {r["provenance"]["checkpoint"] for r in runs.values()}
    assert len(ckpts) == 2  # one per seed
    claims = (tmp_path / "reports" / "claims.md").read_text()
    assert "| Instruction conditioning improves re-ranking (T2I R@1, R@5). | synthetic (tiny)" in claims
    assert "Verdicts at the base seed 0" in claims and "| seed 0 | seed 1 | Across seeds |" in claims
    assert "over 2 seed(s) (0: " in claims
    ablations = (tmp_path / "reports" / "ablations.md").read_text()
    section = ablations[ablations.index("## Instruction-conditioned ITM") :]
    assert "; seed 0" in section and "; seed 1" in section and section.count("ΔR@1 = ") == 2
    assert "ΔR@5 = " in section
