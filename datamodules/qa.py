"""Question-answer data for ``--task vqa``, per dataset (``QA_SOURCES``: dataset name -> reader).

* ``synthetic``: questions generated from the scene graphs
  (:mod:`datamodules.synthetic.questions`): train questions from the train split, test
  questions from the evaluated split; images served by the DataModule (``image_items``).
* ``rsicap``: RSIEval's QA pairs (``<root>/RSIEval/annotations.json``, read by
  :func:`datamodules.rsicap.read_rsieval`: empty questions skipped, types kept as given),
  evaluation only -- RSIEval has no training pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from datamodules.base import DataError, IndexedImages, sha256_of_files
from datamodules.synthetic.questions import Question, scene_text, split_questions


@dataclass
class QAData:
    """train: questions to train on (None: evaluation only); test: the evaluated questions.
    ``*_items``: ``image_index -> tensor`` (what the model takes as an image); ``train_context``:
    per training image, its content as text (the tiny LM's pretraining context), if known."""

    test: list[Question]
    test_items: Callable[[int], torch.Tensor]
    train: list[Question] | None = None
    train_items: Callable[[int], torch.Tensor] | None = None
    train_context: list[str] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def training(self) -> tuple[list[Question], Callable[[int], torch.Tensor]]:
        """``(train, train_items)``; refused for evaluation-only QA pairs."""
        if self.train is None or self.train_items is None:
            raise ValueError("these QA pairs are for evaluation only (no training questions)")
        return self.train, self.train_items


def synthetic_qa(dm, seed: int) -> QAData:
    split = dm.config.eval_split
    questions = {
        s: split_questions([(r.image_id, r.metadata["scene"]) for r in dm.records(s)], seed) for s in ("train", split)
    }
    return QAData(
        test=questions[split],
        test_items=dm.image_items(split),
        train=questions["train"],
        train_items=dm.image_items("train"),
        train_context=[scene_text(r.metadata["scene"]) for r in dm.records("train")],
        provenance={
            "source": "synthetic scene-graph questions",
            "split": split,
            "question_seed": seed,
            "n_train_questions": len(questions["train"]),
        },
    )


def rsieval_qa(dm, seed: int) -> QAData:
    ev = dm.rsieval()
    if ev is None:
        raise DataError(
            f"rsicap: VQA needs RSIEval: {dm.root / 'RSIEval' / 'annotations.json'} not found "
            "(the 'rsgpt dataset/' layout, with RSIEval/ beside RSICap/)"
        )
    questions = [Question(i, qa.question, qa.answer, qa.type) for i, im in enumerate(ev.images) for qa in im.qa_pairs]
    images = IndexedImages([im.path for im in ev.images], dm.transform, tolerant=False)
    path = dm.root / "RSIEval" / "annotations.json"
    return QAData(
        test=questions,
        test_items=lambda i: images[i][1],
        provenance={
            "source": "RSIEval",
            "annotations": str(path),
            "annotations_sha256": sha256_of_files([path]),
            "n_images": len(ev.images),
            "n_skipped_empty_questions": ev.n_skipped_questions,
        },
    )


@dataclass(frozen=True)
class QASource:
    """read: ``(datamodule, seed) -> QAData``; trains: whether it has training questions."""

    read: Callable[[Any, int], QAData]
    trains: bool


#: dataset name -> its QA source
QA_SOURCES: dict[str, QASource] = {"synthetic": QASource(synthetic_qa, True), "rsicap": QASource(rsieval_qa, False)}
