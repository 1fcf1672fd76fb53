"""VQA scores: exact-match accuracy per question type and the majority-answer baseline.

* **exact match**: the normalized prediction equals the normalized answer
  (:func:`lightning_modules.vqa.normalize_answer`: lower case, punctuation dropped,
  whitespace collapsed).
* **majority baseline** of a type: always answer the most frequent normalized answer of that
  type among the *reference* questions (the training questions; ties: the alphabetically
  first); its accuracy is measured on the evaluated questions like the model's.

Flat keys: ``vqa/accuracy`` and ``vqa/majority_accuracy`` (all questions), and per type
``vqa/<type>/accuracy``, ``vqa/<type>/majority_accuracy``, ``vqa/<type>/n``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from datamodules.synthetic.questions import Question
from lightning_modules.vqa import normalize_answer


def majority_answers(reference: Sequence[Question]) -> dict[str, str]:
    """Type -> its most frequent normalized answer in ``reference``."""
    counts: dict[str, Counter] = {}
    for q in reference:
        counts.setdefault(q.type, Counter())[normalize_answer(q.answer)] += 1
    return {t: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for t, c in sorted(counts.items())}


def vqa_scores(
    questions: Sequence[Question], predictions: Sequence[str], majority: dict[str, str]
) -> tuple[dict[str, float], list[dict], list[bool]]:
    """``(flat metrics, per-type table rows, per-question correctness)``."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(questions)} questions")
    correct = [normalize_answer(p) == normalize_answer(q.answer) for q, p in zip(questions, predictions)]
    by_majority = [majority.get(q.type) == normalize_answer(q.answer) for q in questions]
    metrics: dict[str, float] = {}
    rows = []
    for t in sorted({q.type for q in questions}):
        idx = [i for i, q in enumerate(questions) if q.type == t]
        acc = sum(correct[i] for i in idx) / len(idx)
        base = sum(by_majority[i] for i in idx) / len(idx)
        metrics |= {f"vqa/{t}/accuracy": acc, f"vqa/{t}/majority_accuracy": base, f"vqa/{t}/n": float(len(idx))}
        rows.append(
            {"type": t, "n": len(idx), "accuracy": acc, "majority_accuracy": base, "majority_answer": majority.get(t)}
        )
    n = max(1, len(questions))
    metrics |= {"vqa/accuracy": sum(correct) / n, "vqa/majority_accuracy": sum(by_majority) / n}
    return metrics, rows, correct
