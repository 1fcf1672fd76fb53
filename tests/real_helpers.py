"""Helpers shared by the real-dataset tests: a short ``bench run`` and a JSON fuzzer."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import strategies as st
from typer.testing import CliRunner

from benchmark.cli import app

SMALL_MODEL = 'model_args={"vision_layers": 1, "text_layers": 1, "vision_width": 32, "text_width": 32, "embed_dim": 16}'

runner = CliRunner()


def bench_run(tmp_path: Path, dataset: str, root: Path, *extra: str, expect: int = 0):
    """``bench run --model clip --dataset DATASET --data-root ROOT`` at a tiny size, 1 epoch."""
    args = [
        "run",
        "--model",
        "clip",
        "--dataset",
        dataset,
        "--data-root",
        str(root),
        "--epochs",
        "1",
        "--no-progress",
        "--results-dir",
        str(tmp_path / "results"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--set",
        SMALL_MODEL,
        "--set",
        "data.batch_size=4",
        "--set",
        "eval.measure=false",
        *extra,
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == expect, res.output
    return res


def result(tmp_path: Path, dataset: str, tag: str = "default") -> dict:
    return json.loads((tmp_path / "results" / f"clip__{dataset}__{tag}.json").read_text())


#: any JSON value (what a malformed annotation file may hold)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@st.composite
def mutated(draw, valid: object) -> object:
    """``valid`` (a JSON document) with one node replaced by any JSON value, or one key dropped."""
    doc = json.loads(json.dumps(valid))
    nodes: list[tuple[object, object]] = []  # (container, key or index)

    def walk(node):
        if isinstance(node, dict):
            for k in node:
                nodes.append((node, k))
                walk(node[k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                nodes.append((node, i))
                walk(v)

    walk(doc)
    if not nodes:
        return draw(json_values)
    container, key = nodes[draw(st.integers(0, len(nodes) - 1))]
    if isinstance(container, dict) and draw(st.booleans()):
        del container[key]
    else:
        container[key] = draw(json_values)
    return doc
