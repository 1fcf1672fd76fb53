"""The attribute-contrast question writer for SynthScenes (the ``rules`` backend's logic).

Not an LLM: deterministic rules over the benchmark's closed vocabulary. It reads the
original query and the shown captions with :mod:`benchmark.feedback.scene_text` and asks
about what the query leaves open, one question per *kind* (a registry, in this order):

* ``background.colour`` / ``background.pattern`` -- options: every value, those seen in
  the shown captions first (positives, then negatives by frequency);
* ``object`` -- "which of these objects is also in the image": (colour, shape) types
  mentioned in the shown captions but not in the query, never offered before;
* ``size`` / ``position`` -- of the query's first object that names colour and shape but
  no size / column.

Each kind scores its contrast: the number of distinct values the shown captions mention,
plus 2 for every value seen among positives and not among negatives; the best
``max_questions`` kinds are asked (ties in registry order). A kind is asked once (``object``
again with new options). The query update adds the answers' attributes to the current
query in caption style ("a large red circle and a blue square, on a striped pink
background"); "none / unsure" answers add nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from benchmark.feedback.scene_text import Mention, read
from benchmark.feedback.schema import is_unsure
from datamodules.synthetic.constraints import POSITION_PHRASES
from datamodules.synthetic.vocabulary import BACKGROUND_COLOURS, BACKGROUND_PATTERNS, COLUMNS, ROWS, SIZES


@dataclass(frozen=True)
class Shown:
    """What the writer holds in a round: the query and the shown captions, read."""

    query: Mention
    positive: list[Mention]
    negative: list[Mention]
    asked: set[str]
    offered: set[str]


@dataclass(frozen=True)
class Draft:
    about: str
    question: str
    options: list[str]
    score: float


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(*words: str) -> str:
    ws = [w for w in words if w]
    return f"{_article(ws[0])} {' '.join(ws)}"


def _contrast(pos: list[set[str]], neg: list[set[str]]) -> tuple[float, list[str]]:
    """(score, values in display order) from the values each shown caption mentions."""
    counts = Counter(v for vs in neg for v in vs)
    pos_values = [v for vs in pos for v in sorted(vs)]
    ordered = list(dict.fromkeys(pos_values + [v for v, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]))
    only_pos = {v for v in pos_values if v not in counts}
    return len(ordered) + 2 * len(only_pos), ordered


def _background(attr: str, vocabulary: tuple[str, ...], question: str) -> Callable[[Shown, int], Draft | None]:
    def draft(s: Shown, max_options: int) -> Draft | None:
        about = f"background.{attr}"
        if about in s.asked or attr in s.query.background_dict():
            return None
        values = lambda ms: [{m.background_dict()[attr]} if attr in m.background_dict() else set() for m in ms]  # noqa: E731
        score, seen = _contrast(values(s.positive), values(s.negative))
        order = [v for v in seen if v in vocabulary] + [v for v in vocabulary if v not in seen]
        return Draft(about, question, [_phrase(v, "background") for v in order[:max_options]], score)

    return draft


def _object_attribute(
    attr: str, values: tuple[str, ...], option: Callable[[str, str, str], str], question: str
) -> Callable[[Shown, int], Draft | None]:
    """Ask ``attr`` (size, row or column) of the first query object that names colour and
    shape but not ``attr`` and was not asked about yet."""

    def draft(s: Shown, max_options: int) -> Draft | None:
        for o in s.query.object_dicts():
            if "colour" not in o or "shape" not in o or attr in o:
                continue
            c, sh = o["colour"], o["shape"]
            about = f"{attr}:{c} {sh}"
            if about in s.asked:
                continue
            score, _ = _contrast(_object_values(s.positive, c, sh, attr), _object_values(s.negative, c, sh, attr))
            return Draft(about, question.format(c=c, s=sh), [option(v, c, sh) for v in values][:max_options], score)
        return None

    return draft


def _object_values(ms: list[Mention], colour: str, shape: str, attr: str) -> list[set[str]]:
    return [
        {o[attr] for o in m.object_dicts() if o.get("colour") == colour and o.get("shape") == shape and attr in o}
        for m in ms
    ]


def _placed(attr: str) -> Callable[[str, str, str], str]:
    """Option text for a row or column value: "a red circle at the top"."""
    key = (lambda v: (v, None)) if attr == "row" else (lambda v: (None, v))
    return lambda v, c, sh: f"{_phrase(c, sh)} {POSITION_PHRASES[key(v)]}"


def _object(s: Shown, max_options: int) -> Draft | None:
    have = {(o.get("colour"), o.get("shape")) for o in s.query.object_dicts()}

    def kinds(ms: list[Mention]) -> list[set[str]]:
        return [
            {
                f"{o['colour']} {o['shape']}"
                for o in m.object_dicts()
                if "colour" in o and "shape" in o and (o["colour"], o["shape"]) not in have
            }
            for m in ms
        ]

    score, seen = _contrast(kinds(s.positive), kinds(s.negative))
    fresh = [k for k in seen if _phrase(*k.split()) not in s.offered]
    if len(fresh) < 2:
        return None
    return Draft(
        "object",
        "Which of these objects is also in the image you want?",
        [_phrase(*k.split()) for k in fresh[:max_options]],
        score,
    )


#: question kinds, in tie-break order
KINDS: dict[str, Callable[[Shown, int], Draft | None]] = {
    "background.colour": _background(
        "colour", tuple(BACKGROUND_COLOURS), "What colour is the background of the image you want?"
    ),
    "background.pattern": _background(
        "pattern", BACKGROUND_PATTERNS, "Which background pattern does the image you want have?"
    ),
    "object": _object,
    "size": _object_attribute(
        "size", tuple(SIZES), lambda v, c, sh: _phrase(v, c, sh), "How large is the {c} {s} in the image you want?"
    ),
    "column": _object_attribute(
        "column", COLUMNS, _placed("column"), "In which column is the {c} {s} in the image you want?"
    ),
    "row": _object_attribute("row", ROWS, _placed("row"), "In which row is the {c} {s} in the image you want?"),
}


def write_questions(data: dict, max_questions: int = 3, max_options: int = 6) -> dict:
    """``{"questions": [...]}`` for a question-generation input (see ``prompts.py``)."""
    history = data.get("history") or []
    shown = Shown(
        query=read(data["query"]),
        positive=[read(c) for c in data.get("positive_captions", [])],
        negative=[read(c) for c in data.get("negative_captions", [])],
        asked={h.get("about", "") for h in history if h.get("about") != "object"},
        offered={o for h in history if h.get("about") == "object" for o in h.get("options", [])},
    )
    drafts = [d for kind in KINDS.values() if (d := kind(shown, max_options)) is not None]
    order = {name: i for i, name in enumerate(KINDS)}
    drafts.sort(key=lambda d: (-d.score, order[d.about.split(":")[0]]))
    return {
        "questions": [{"question": d.question, "options": d.options, "about": d.about} for d in drafts[:max_questions]]
    }


# -- query update --------------------------------------------------------------------------
_BG_WORDS = "|".join([*BACKGROUND_PATTERNS, *BACKGROUND_COLOURS])
_BG_PHRASE = re.compile(rf"\b(?:an?)\s+((?:(?:{_BG_WORDS})\s+)*)background\b")
_BG_CLAUSE = re.compile(rf",?\s+on\s+(?:an?)\s+(?:(?:{_BG_WORDS})\s+)*background\b")


def _with_background(text: str, add: dict[str, str]) -> str:
    m = _BG_PHRASE.search(text)
    have = read(m.group(0)).background_dict() if m else {}
    merged = {**add, **have}
    phrase = _phrase(*(merged[k] for k in ("pattern", "colour") if k in merged), "background")
    if m:
        return text[: m.start()] + phrase + text[m.end() :]
    joiner = ", on " if len(read(text).objects) > 1 else " on "
    return text + joiner + phrase


_POSITIONS = sorted(((phrase, key) for key, phrase in POSITION_PHRASES.items()), key=lambda x: -len(x[0]))


def _with_object(text: str, obj: dict[str, str]) -> str:
    """Size and position added to the query's phrase for the same (colour, shape), merged
    with a position it already has; an object the query lacks is added ("and a blue square")."""
    c, sh = obj.get("colour"), obj.get("shape")
    m = re.search(rf"\b(?:an?)\s+(?:(large|small)\s+)?{c}\s+{sh}\b", text) if c and sh else None
    if m and c and sh:  # a match implies both
        phrase = _phrase(obj["size"], c, sh) if "size" in obj and not m.group(1) else m.group(0)
        rest, row, col = text[m.end() :], obj.get("row"), obj.get("column")
        for p, (r0, c0) in _POSITIONS:
            if rest.startswith(" " + p):
                row, col, rest = r0 or row, c0 or col, rest[len(p) + 1 :]
                break
        position = POSITION_PHRASES.get((row, col))
        return text[: m.start()] + phrase + (f" {position}" if position else "") + rest
    phrase = _phrase(*[w for w in (obj.get("size"), c, sh or "object") if w])
    position = POSITION_PHRASES.get((obj.get("row"), obj.get("column")))
    if position:
        phrase += " " + position
    clause = _BG_CLAUSE.search(text)
    if clause:
        return text[: clause.start()] + " and " + phrase + text[clause.start() :]
    return text + " and " + phrase


def update_query(data: dict) -> dict:
    """``{"query": ...}``: the current query with the answered attributes added."""
    text = str(data.get("current_query") or data["query"]).strip()
    end = "." if text.endswith(".") else ""
    text = text.rstrip(" .")
    for qa in data.get("answers", []):
        answer = str(qa.get("answer", ""))
        if not answer or is_unsure(answer):
            continue
        m = read(answer)
        if m.background:
            text = _with_background(text, m.background_dict())
        for obj in m.object_dicts():
            text = _with_object(text, obj)
    return {"query": text + end}
