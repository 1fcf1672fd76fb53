"""Fuzzing ``--set`` and ``--config`` parsing (hypothesis): any input gives a RunConfig or one
ConfigError naming the option, never another exception; inputs reach deep nesting and
integers beyond Python's digit limit."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.config import ConfigError, RunConfig, build_run_config, load_override_file, parse_set, to_dict

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)

#: option paths, valid and not: the fuzzer mixes them with arbitrary values
PATHS = [
    "seed",
    "tag",
    "size",
    "task",
    "model",
    "dataset",
    "results_dir",
    "checkpoint",
    "train",
    "train.max_epochs",
    "train.optim.lr",
    "train.optim",
    "train.gradient_clip_val",
    "train.precision",
    "train.devices",
    "train.strategy",
    "train.accelerator",
    "train.limit_train_batches",
    "train.num_threads",
    "data",
    "data.num_workers",
    "data.batch_size",
    "data.global_batch_size",
    "data.eval_split",
    "eval.ks",
    "eval.directions",
    "eval.chunk_size",
    "eval.memmap_min_mb",
    "eval.measurement",
    "model_args",
    "model_args.width",
    "task_args",
    "bogus",
    "train.bogus",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["32-true", "auto", "ddp", "clip", "tiny", "full", "test", "t2i"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["lr", "max_epochs", "x", "k"]), inner, max_size=3)
    ),
    max_leaves=12,
)
big_raw = st.one_of(
    st.integers(4301, 30_000).map(lambda n: "7" * n),  # past int_max_str_digits
    st.integers(201, 30_000).map(lambda n: "[" * n + "]" * n),  # past the nesting bound
    st.integers(201, 30_000).map(lambda n: '{"a":' * n + "0" + "}" * n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]),
)


def _build(assignments: list[str]) -> RunConfig | None:
    try:
        return build_run_config({"model": "clip"}, parse_set(assignments))
    except ConfigError as e:
        assert str(e)
        return None


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PATHS), values), max_size=6))
def test_set_assignments_give_a_config_or_a_config_error(pairs):
    cfg = _build([f"{k}={json.dumps(v)}" for k, v in pairs])
    if cfg is not None:
        assert build_run_config({"model": "clip"}, to_dict(cfg)) == cfg  # what passed round-trips


@FUZZ
@given(st.lists(st.text(alphabet='ab.=[]{}"1e-:,NaIfty ', max_size=30), max_size=5))
def test_arbitrary_set_strings_never_escape(raw):
    _build(raw)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(PATHS), big_raw)
def test_deep_and_huge_set_values_are_refused(path, raw):
    try:
        parse_set([f"{path}={raw}"])
    except ConfigError as e:
        assert f"--set {path}" in str(e)
    else:
        raise AssertionError("a deep, huge or non-finite value was accepted")


@FUZZ
@given(st.dictionaries(st.sampled_from(PATHS), values, max_size=6))
def test_config_files_give_a_config_or_a_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "c.json"
    path.write_text(json.dumps(data))
    try:
        cfg = build_run_config({"model": "clip"}, load_override_file(path))
    except ConfigError as e:
        assert str(e)
    else:
        assert isinstance(cfg, RunConfig)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(big_raw | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_deep_huge_or_garbled_config_files_are_named(tmp_path_factory, body):
    path = tmp_path_factory.mktemp("cfg") / "c.json"
    path.write_bytes(body.encode("latin-1", errors="replace"))  # non-ASCII: not UTF-8
    try:
        load_override_file(path)
    except ConfigError as e:
        assert str(path) in str(e)
