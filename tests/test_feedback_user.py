"""The simulated user, the SynthScenes text reader, the output schema and the rules writer."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.feedback import prompts, scene_text
from benchmark.feedback.llm.base import LLMError
from benchmark.feedback.llm.rules import RulesBackend
from benchmark.feedback.schema import UNSURE, Question, parse_query, parse_questions
from benchmark.feedback.user import CaptionTruth, SceneTruth, SimulatedUser
from datamodules.synthetic.scene import Scene

SCENE = Scene.from_json(
    {
        "objects": [
            {
                "shape": "circle",
                "colour": "red",
                "size": "large",
                "row": "top",
                "column": "left",
                "x": 0.1667,
                "y": 0.1667,
            },
            {
                "shape": "square",
                "colour": "blue",
                "size": "small",
                "row": "bottom",
                "column": "right",
                "x": 0.8333,
                "y": 0.8333,
            },
        ],
        "background": {"pattern": "striped", "colour": "pink"},
    }
)


def test_scene_text_reads_caption_style_phrases():
    m = scene_text.read("a large red circle to the left of a small blue square, on a striped pink background")
    assert m.object_dicts() == [
        {"size": "large", "colour": "red", "shape": "circle"},
        {"size": "small", "colour": "blue", "shape": "square"},
    ]
    assert m.background_dict() == {"pattern": "striped", "colour": "pink"}
    assert scene_text.read("a white ring in the center").object_dicts() == [
        {"colour": "white", "shape": "ring", "row": "middle", "column": "center"}
    ]
    assert scene_text.read("two black crosses in the center column").object_dicts() == [
        {"colour": "black", "shape": "cross", "column": "center"}
    ]
    assert scene_text.read("a black background").object_dicts() == []
    assert scene_text.read("pink").empty and scene_text.read("something else").empty


def _q(question: str, *options: str) -> Question:
    return Question(question, (*options, UNSURE))


def test_scene_truth_answers_from_the_scene_graph_only():
    user = SimulatedUser([SceneTruth(SCENE)])
    ask = lambda q: user.answer(0, q, query=0, round_=1, index=0)  # noqa: E731
    assert ask(_q("What colour is the background?", "a gray background", "a pink background")) == "a pink background"
    assert ask(_q("What colour is the background?", "gray", "pink")) == "pink"  # bare colours about the background
    assert ask(_q("Which object is also there?", "a green star", "a blue square")) == "a blue square"
    assert ask(_q("What colour is the circle?", "blue", "red")) == "red"  # the shape comes from the question
    assert ask(_q("What colour is the square?", "red", "green")) == UNSURE
    assert (
        ask(_q("Where is the red circle?", "a red circle on the right", "a red circle at the top"))
        == "a red circle at the top"
    )
    assert ask(_q("How large is the red circle?", "a small red circle", "a large red circle")) == "a large red circle"
    assert ask(_q("Anything?", "a checkered background", "a yellow star")) == UNSURE
    assert ask(_q("Unreadable?", "something", "else")) == UNSURE


def test_caption_truth_matches_content_words():
    truth = CaptionTruth(["A man riding a horse on a beach.", "Two dogs play in the snow."])
    user = SimulatedUser([truth])
    q = _q("What is in the picture?", "a cat", "horses on the beach")
    assert user.answer(0, q, query=0, round_=1, index=0) == "horses on the beach"
    assert user.answer(0, _q("Where?", "a kitchen", "a street"), query=0, round_=1, index=0) == UNSURE


def test_unsure_rate_is_seeded_and_marking_uses_relevance():
    truths = [SceneTruth(SCENE)]
    q = _q("What colour is the background?", "a pink background", "a gray background")
    always = SimulatedUser(truths, unsure_rate=1.0)
    assert all(always.answer(0, q, query=i, round_=1, index=0) == UNSURE for i in range(5))
    half = [SimulatedUser(truths, seed=3, unsure_rate=0.5).answer(0, q, query=i, round_=1, index=0) for i in range(40)]
    again = [SimulatedUser(truths, seed=3, unsure_rate=0.5).answer(0, q, query=i, round_=1, index=0) for i in range(40)]
    assert half == again and 5 < half.count(UNSURE) < 35
    relevant = torch.tensor([[False, True, False, True]])
    marks = SimulatedUser(truths).mark([0], torch.tensor([[3, 0, 1]]), relevant)  # the binary user by default
    assert marks.ps.tolist() == [[True, False, True]] and marks.ns.tolist() == [[False, True, False]]
    assert marks.match.tolist() == marks.ps.tolist() and marks.closeness is None


def test_schema_parses_fenced_json_and_refuses_bad_output():
    text = (
        'Sure!\n```json\n{"questions": [{"question": "Colour?", "options": ["red", "blue", "Not sure"]},'
        ' {"question": "Pattern?", "options": ["plain", "striped"], "about": "bg"}]}\n```'
    )
    qs = parse_questions(text)
    assert [q.options for q in qs] == [("red", "blue", UNSURE), ("plain", "striped", UNSURE)]
    assert qs[1].about == "bg"
    bad = {
        "no json here": "no JSON object",
        '{"questions": [{"question": "Q?", "options": ["a", "b"]}]}': "expected 2 to 3 questions",
        '{"questions": [{"question": "Q?", "options": ["a", "a"]}, {"question": "R?", "options": ["b", "c"]}]}': "duplicates",
        '{"questions": [{"question": "Q?", "options": ["a"]}, {"question": "R?", "options": ["b", "c"]}]}': "2 to 6 options",
        '{"questions": [{"question": "", "options": ["a", "b"]}, {"question": "R?", "options": ["b", "c"]}]}': "non-empty",
        '{"questions": "many"}': "must be a list",
    }
    for raw, message in bad.items():
        with pytest.raises(LLMError, match=message) as e:
            parse_questions(raw)
        assert e.value.reason == "invalid_output"
    assert parse_query('{"query": "  a red   circle "}') == "a red circle"
    with pytest.raises(LLMError, match="more than 5"):
        parse_query('{"query": "a red circle"}', max_chars=5)
    with pytest.raises(LLMError, match="query"):
        parse_query('{"answer": "x"}')


def test_rules_backend_asks_contrasting_questions_and_updates_the_query():
    backend = RulesBackend()
    assert backend.describe()["is_llm"] is False and "not an LLM" in backend.describe()["label"]
    limits = prompts.Limits()
    messages = prompts.question_messages(
        "Find images of a red circle.",
        ["a red circle and a blue square, on a striped background"],
        ["a red circle and a green star, on a plain background", "a large red circle on a plain pink background"],
        [],
        limits,
    )
    assert "INPUT JSON:" in messages[-1]["content"] and messages[0]["role"] == "system"
    qs = parse_questions(backend.generate(messages))
    about = [q.about for q in qs]
    # contrast: pattern and object 2 values + 2 for a positive-only value each; colour 1 value
    assert about == ["background.pattern", "object", "background.colour"]
    assert qs[0].options[:2] == ("a striped background", "a plain background")  # the positive's value first
    assert qs[1].options[:2] == ("a blue square", "a green star")
    answers = [q.options[0] for q in qs]
    update = prompts.update_messages(
        "Find images of a red circle.",
        "Find images of a red circle.",
        [q.to_json() | {"answer": a} for q, a in zip(qs, answers, strict=True)],
        [],
        [],
        limits,
    )
    refined = parse_query(backend.generate(update))
    assert refined == "Find images of a red circle and a blue square on a striped pink background."
    # asked kinds are not asked again; an object question comes back with new options only
    history = [q.to_json() | {"answer": UNSURE} for q in qs]
    again = json.loads(
        backend.generate(
            prompts.question_messages(
                "Find images of a red circle.",
                [],
                ["a red circle and a green star", "a red circle and a blue square"],
                history,
                limits,
            )
        )
    )
    assert [q["about"] for q in again["questions"]] == ["size:red circle", "column:red circle", "row:red circle"]
    # outside the SynthScenes vocabulary only the background is left to ask, once: then nothing
    asked = [q.to_json() | {"answer": UNSURE} for q in qs if q.about.startswith("background")]
    dogs = prompts.question_messages("A dog on the beach.", ["a dog on grass"], ["two cats"], asked, limits)
    with pytest.raises(LLMError, match="0 attribute contrast") as e:
        backend.generate(dogs)
    assert e.value.reason == "nothing_to_ask"


def test_rules_update_merges_sizes_positions_and_background():
    backend = RulesBackend()

    def update(query: str, *answers: str) -> str:
        data = {
            "task": "update",
            "query": query,
            "current_query": query,
            "answers": [{"question": "q", "options": [a], "answer": a} for a in answers],
        }
        return json.loads(backend.generate([{"role": "user", "content": "INPUT JSON:\n" + json.dumps(data)}]))["query"]

    assert (
        update("Show me a red circle on the right.", "a red circle at the top", "a small red circle")
        == "Show me a small red circle in the top right."
    )
    assert (
        update("Show me a red circle on a striped background.", "a teal background", UNSURE)
        == "Show me a red circle on a striped teal background."
    )
    with pytest.raises(LLMError) as e:
        backend.generate([{"role": "user", "content": "no marker"}])
    assert e.value.reason == "backend_error"
