"""The safe JSON reader (datamodules/safe_json.py): every unsafe input is one JsonReadError naming
the source; valid JSON reads exactly as ``json.loads`` reads it. Fuzzed with hypothesis, with
inputs deep and large enough to reach the nesting bound and Python's integer-digit limit."""

from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamodules.safe_json import MAX_DEPTH, JsonReadError, loads_json, nesting_depth_exceeds, read_json

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # large inputs

finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | finite | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@FUZZ
@given(json_values)
def test_valid_json_reads_as_json_loads_reads_it(value):
    text = json.dumps(value)
    assert loads_json(text, "t") == json.loads(text)
    assert nesting_depth_exceeds(text, _depth(value)) is False
    if _depth(value) >= 1:
        assert nesting_depth_exceeds(text, _depth(value) - 1) is True


@BIG
@given(depth=st.integers(MAX_DEPTH + 1, 120_000), opener=st.sampled_from(["[", '{"k":']), closed=st.booleans())
def test_deep_nesting_is_refused_before_parsing(depth, opener, closed):
    closer = "]" if opener == "[" else "}"
    text = opener * depth + "1" + (closer * depth if closed else "")
    with pytest.raises(JsonReadError, match="nested deeper than 200"):
        loads_json(text, "probe.json")


@FUZZ
@given(depth=st.integers(1, MAX_DEPTH))
def test_nesting_up_to_the_bound_is_read(depth):
    assert _depth(loads_json("[" * depth + "]" * depth, "t")) == depth


@FUZZ
@given(st.text(alphabet='[]{}"\\:,1 ', max_size=400))
def test_any_bracket_soup_is_a_value_or_a_json_read_error(text):
    try:
        value = loads_json(text, "soup")
    except JsonReadError as e:
        assert str(e).startswith("soup: ")
    else:
        assert value == json.loads(text)


@BIG
@given(digits=st.integers(4301, 60_000), sign=st.sampled_from(["", "-"]))
def test_huge_integers_are_refused(digits, sign):
    with pytest.raises(JsonReadError, match="a number too large to read"):
        loads_json(f'{{"seed": {sign}{"7" * digits}}}', "probe.json")


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"lr": -Infinity}', "1e999", "[-1e400]"])
def test_non_finite_numbers_are_refused(text):
    with pytest.raises(JsonReadError, match="probe.json: .*(finite)"):
        loads_json(text, "probe.json")


@FUZZ
@given(st.binary(min_size=1, max_size=200))
def test_arbitrary_bytes_are_a_value_or_a_json_read_error(data):
    try:
        value = loads_json(data, "bytes.json")
    except JsonReadError as e:
        assert "bytes.json" in str(e)
    else:
        assert value == json.loads(data.decode("utf-8"))
        assert not (isinstance(value, float) and not math.isfinite(value))


def test_files_that_are_not_json_files_are_named(tmp_path):
    with pytest.raises(JsonReadError, match=r"result file .*absent.json: not found"):
        read_json(tmp_path / "absent.json", what="result file")
    with pytest.raises(JsonReadError, match="is a directory"):
        read_json(tmp_path)
    latin = tmp_path / "latin1.json"
    latin.write_bytes('{"tag": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(JsonReadError, match=r"latin1.json: not UTF-8"):
        read_json(latin)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(JsonReadError, match="not a regular file"):
        read_json(fifo)  # would block for ever if it were opened
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 100 + "0]")
    with pytest.raises(JsonReadError, match="more than the 64"):
        read_json(big, max_bytes=64)
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2.5, "x"]}')
    assert read_json(good) == {"a": [1, 2.5, "x"]}


def test_syntax_errors_are_marked_as_such():
    with pytest.raises(JsonReadError) as info:
        loads_json("{not json", "f.json")
    assert info.value.syntax and "line 1" in str(info.value)
    with pytest.raises(JsonReadError) as info:
        loads_json("[" * 1000 + "]" * 1000, "f.json")
    assert not info.value.syntax
