"""``scripts/feedback_sweep.py``: its round-0 shortcut gives the ranks of the plain protocol,
and its run config is the one ``bench feedback`` trains and caches for the same flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.config import from_dict
from benchmark.feedback.config import FeedbackConfig
from benchmark.feedback.kernels import standardised
from benchmark.feedback.protocol import run_protocol
from benchmark.feedback.similarity import GalleryScorer
from benchmark.feedback.user import SimulatedUser
from lightning_modules.base import Encoded
from tests.feedback_helpers import FakeModel, tiny_task
from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "feedback_sweep.py"


def _load():
    return load_script(SCRIPT)


def test_round0_scorer_runs_the_same_protocol_as_the_plain_scorer():
    """Round 0 read from precomputed rows (query indices as the "encodings") gives every arm
    the ranks of the plain run, for both users, with the refresh defaults."""
    sweep = _load()
    task, gallery = tiny_task(40)
    model = FakeModel()
    plain = GalleryScorer(model, gallery, model.score, batch_size=16)
    queries = plain.encode_texts(task.queries)
    round0 = plain.scores(queries)
    fast = sweep.Round0Scorer(model, gallery, model.score, batch_size=16, round0=round0)
    index = Encoded(torch.arange(task.n_queries, dtype=torch.float64)[:, None])
    assert torch.equal(fast.scores(index[5:9]), round0[5:9])
    assert torch.equal(fast.scores(queries[5:9]), round0[5:9])  # real encodings still go to the model
    for user_model in ("graded", "binary"):
        fb = from_dict(
            FeedbackConfig,
            {
                "rounds": 3,
                "display": 3,
                "chunk_size": 16,
                "arms": ["exclude", "refresh"],
                "user": {"model": user_model},
            },
            "feedback",
        )
        user = SimulatedUser.from_config(task.truths, task.closeness, fb.user, 1)
        a = run_protocol(task, plain, queries, fb, user)
        b = run_protocol(task, fast, index, fb, user)
        for arm in fb.arms:
            np.testing.assert_array_equal(a.ranks[arm], b.ranks[arm])
        assert not np.array_equal(a.ranks["refresh"][0], a.ranks["refresh"][-1])  # feedback moved something


def test_sweep_run_config_is_the_cli_checkpoint_on_another_split():
    """The split is an evaluation choice: val and test sweeps load the same checkpoint (same
    training hash), which is the one of ``bench feedback`` for the same flags."""
    from benchmark.run_flags import CliConfig

    sweep = _load()
    val = sweep.sweep_run_config("ours", "synthetic", "val")
    test = sweep.sweep_run_config("ours", "synthetic", "test", ["train.max_epochs=3"])
    cli = CliConfig(given={"model": "ours", "dataset": "synthetic", "seed": 0}).build()
    assert (val.data.eval_split, test.data.eval_split) == ("val", "test")
    assert test.train.max_epochs == 3  # --set overrides reach the run config
    assert val.training_hash() == cli.training_hash() != test.training_hash()


def test_scene_similarity_diagnostic_reads_the_scene_graphs():
    """``--scene-similarity``: the scene kernel is 1 on identical scenes and ranks a scene that
    differs in one object's colour above one that shares nothing but the background; with mix
    1 the refresh rows are exactly the standardised scene rows, with mix 0 the model's."""
    from datamodules.synthetic.scene import Scene
    from tests.feedback_helpers import tiny_split

    sweep = _load()

    def scene(colour: str, shape: str, row: str = "top") -> Scene:
        obj = {"shape": shape, "colour": colour, "size": "large", "row": row, "column": "left"}
        obj |= {"x": 1 / 6, "y": {"top": 1 / 6, "bottom": 5 / 6}[row]}
        return Scene.from_json({"objects": [obj], "background": {"pattern": "plain", "colour": "white"}})

    sim = sweep.scene_similarity(
        [scene("red", "circle"), scene("red", "circle"), scene("blue", "circle"), scene("green", "square", "bottom")]
    )
    assert torch.allclose(sim.diagonal(), torch.ones(4)) and sim[0, 1].item() == pytest.approx(1.0)
    assert sim[0, 2] > sim[0, 3] > 0  # one attribute (and the kind) off > only the background shared

    _, _, scenes = tiny_split(30)
    _, gallery = tiny_task(30)
    model = FakeModel()
    full = sweep.scene_similarity(scenes)
    items = torch.tensor([3, 7, 7, 12])
    plain = GalleryScorer(model, gallery, model.score, batch_size=8).image_rows(items)
    for mix, want in ((1.0, standardised(full[items])), (0.0, plain)):
        scorer = sweep.Round0Scorer(
            model, gallery, model.score, batch_size=8, round0=torch.zeros(1, 30), scene=full, mix=mix
        )
        assert torch.allclose(scorer.image_rows(items), want, atol=1e-6)
    half = sweep.Round0Scorer(
        model, gallery, model.score, batch_size=8, round0=torch.zeros(1, 30), scene=full, mix=0.5
    ).image_rows(items)
    assert torch.allclose(half, 0.5 * standardised(full[items]) + 0.5 * standardised(plain), atol=1e-5)
