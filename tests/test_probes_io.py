"""The I/O probes of issue 26 (paths, LLM client, concurrent saves, stale temporaries), each run
the way a user meets it -- through the CLI where the CLI reaches it -- and asserted to end in
a clear error (exit 2 naming the file, record and field or the option) or to be handled.

The CLI probes classify what they see as ``clear_error`` (wanted), ``crash`` (a traceback)
or ``silent`` (anything else) and assert ``clear_error``; one test item is one probe (33 in
the default suite). The slow-marked end-to-end probe runs ``bench feedback`` against a local
server with credentials in its URL and checks the result file, transcript and stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.feedback.config import LLMConfig
from benchmark.feedback.llm.base import LLMError
from benchmark.feedback.llm.registry import make_backend
from benchmark.feedback.schema import parse_query, parse_questions
from datamodules.base import DataError
from datamodules.synthetic.annotations import annotation_path, read_annotations
from datamodules.synthetic.generation import ensure_generated, generate
from datamodules.synthetic.options import SyntheticOptions
from tests.fixtures_real import write_coco_karpathy, write_coco_lavis, write_medpix, write_png, write_rsicap
from tests.llm_servers import serve

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": 'INPUT JSON:\n{"task": "update", "query": "q"}'}]
Outcome = tuple[str, str]


# -- fixtures in the real formats, edited per probe ---------------------------------------------
@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, write in (
        ("coco_k", write_coco_karpathy),
        ("coco_l", write_coco_lavis),
        ("medpix", write_medpix),
        ("rsicap", write_rsicap),
    ):
        out[name] = tmp_path_factory.mktemp(name)
        write(out[name])
    out["synth"] = generate(SyntheticOptions(n_train=4, n_val=2, n_test=3), tmp_path_factory.mktemp("synth"), workers=1)
    return out


def _json_edit(path: Path, edit: Callable) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _jsonl_edit_first(path: Path, key: str, value: str) -> None:
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    rec[key] = value
    path.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")


def _link_out(image: Path, outside: Path) -> None:
    write_png(outside, (8, 8), 0)
    image.unlink()
    image.symlink_to(outside)


def _data_check(dataset: str, root: Path, tmp: Path, *needles: str) -> Outcome:
    res = runner.invoke(
        app, ["data", "check", "--dataset", dataset, "--data-root", str(root), "--cache-dir", str(tmp / "cache")]
    )
    if res.exception and not isinstance(res.exception, SystemExit):
        return "crash", "".join(traceback.format_exception(res.exception))
    if res.exit_code == 2 and all(n in res.output for n in needles):
        return "clear_error", res.output
    return "silent", f"exit {res.exit_code}: {res.output}"


# (name, dataset, fixture, edit(root, tmp) -> (annotation file, record, field))
def _karpathy(bad):
    def edit(root, tmp):
        ann = root / "dataset_coco.json"
        _json_edit(ann, lambda d: d["images"][0].update(filename=bad))
        return ann, "images[0]", "'filepath/filename'"

    return edit


def _karpathy_link(root, tmp):
    first = json.loads((root / "dataset_coco.json").read_text())["images"][0]
    _link_out(root / first["filepath"] / first["filename"], tmp / "outside.png")
    return root / "dataset_coco.json", "images[0]", "'filepath/filename'"


def _lavis(bad):
    def edit(root, tmp):
        ann = root / "annotations" / "coco_karpathy_test.json"
        _json_edit(ann, lambda d: d[0].update(image=bad))
        return ann, "entry [0]", "'image'"

    return edit


def _lavis_link(root, tmp):
    ann = root / "annotations" / "coco_karpathy_test.json"
    _link_out(root / "images" / json.loads(ann.read_text())[0]["image"], tmp / "outside.png")
    return ann, "entry [0]", "'image'"


def _rsicap(bad):
    def edit(root, tmp):
        ann = root / "RSICap" / "captions.json"
        _json_edit(ann, lambda d: d["annotations"][0].update(filename=bad))
        return ann, "annotations[0]", "'filename'"

    return edit


def _rsicap_link(root, tmp):
    ann = root / "RSICap" / "captions.json"
    _link_out(
        root / "RSICap" / "images" / json.loads(ann.read_text())["annotations"][0]["filename"], tmp / "outside.png"
    )
    return ann, "annotations[0]", "'filename'"


def _rsieval(bad):
    def edit(root, tmp):
        ann = root / "RSIEval" / "annotations.json"
        _json_edit(ann, lambda d: d["annotations"][0].update(filename=bad))
        return ann, "annotations[0]", "'filename'"

    return edit


def _medpix(bad):
    def edit(root, tmp):
        ann = root / "splitted_dataset" / "descriptions_test.jsonl"
        _jsonl_edit_first(ann, "image", bad)
        return ann, "record 1", "'image'"

    return edit


def _medpix_link(root, tmp):
    ann = root / "splitted_dataset" / "descriptions_test.jsonl"
    _link_out(root / "images" / f"{json.loads(ann.read_text().splitlines()[0])['image']}.png", tmp / "outside.png")
    return ann, "record 1", "'image'"


PATH_PROBES = [
    ("karpathy filename ../../x", "coco", "coco_k", _karpathy("../../outside.png")),
    ("karpathy filename /etc/passwd", "coco", "coco_k", _karpathy("/etc/passwd")),
    ("karpathy symlink out", "coco", "coco_k", _karpathy_link),
    ("lavis image ../x", "coco", "coco_l", _lavis("../outside.png")),
    ("lavis image /etc/passwd", "coco", "coco_l", _lavis("/etc/passwd")),
    ("lavis symlink out", "coco", "coco_l", _lavis_link),
    ("rsicap filename ../x", "rsicap", "rsicap", _rsicap("../outside.png")),
    ("rsicap filename /etc/passwd", "rsicap", "rsicap", _rsicap("/etc/passwd")),
    ("rsicap symlink out", "rsicap", "rsicap", _rsicap_link),
    ("rsieval filename ../x", "rsicap", "rsicap", _rsieval("../../RSICap/captions.json")),
    ("rsieval filename /etc/passwd", "rsicap", "rsicap", _rsieval("/etc/passwd")),
    ("medpix image ../x", "medpix", "medpix", _medpix("../Descriptions")),
    ("medpix image /etc/passwd", "medpix", "medpix", _medpix("/etc/passwd")),
    ("medpix symlink out", "medpix", "medpix", _medpix_link),
]


@pytest.mark.parametrize("name, dataset, fixture, edit", PATH_PROBES, ids=[p[0] for p in PATH_PROBES])
def test_path_probe_through_bench_data_check(real, tmp_path, name, dataset, fixture, edit):
    root = tmp_path / "data"
    shutil.copytree(real[fixture], root, symlinks=True)
    ann, record, field = edit(root, tmp_path)
    outcome, message = _data_check(dataset, root, tmp_path, str(ann), record, f"field {field}", "must be a path inside")
    assert outcome == "clear_error", message


@pytest.mark.parametrize("bad", ["../../outside.png", "/etc/passwd"])
def test_path_probe_synthscenes_annotation(real, tmp_path, bad):
    cache = tmp_path / real["synth"].name
    shutil.copytree(real["synth"], cache)
    ann = annotation_path(cache, "test")
    _json_edit(ann, lambda d: d["images"][0].update(file=bad))
    with pytest.raises(DataError, match=rf"^{ann}: images\[0\] .*field 'file' must be a path inside"):
        read_annotations(ann, "test")


# -- the LLM client -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def servers():
    with serve() as (other, other_handler), serve(redirect_to=other) as (main, _handler):
        yield main, other, other_handler


def _backend(url: str, **kw):
    return make_backend(LLMConfig(backend=f"openai:{url}", retries=0, retry_backoff_s=0.0, **kw))


def _llm_failure(url: str, reason: str, **kw) -> Outcome:
    try:
        _backend(url, **kw).generate(MESSAGES)
    except LLMError as e:
        return ("clear_error" if e.reason == reason else "silent"), str(e)
    except Exception:  # noqa: BLE001 -- what the probe looks for
        return "crash", traceback.format_exc()
    return "silent", "no error"


def test_probe_redirect_to_another_port(servers, monkeypatch):
    main, _other, other_handler = servers
    monkeypatch.setenv("OPENAI_API_KEY", "sk-probe-secret")
    other_handler.seen.clear()
    outcome, msg = _llm_failure(main.replace("//", "//u:pw-probe@") + "/redirect/v1", "http_error")
    assert outcome == "clear_error" and "not followed" in msg, msg
    assert other_handler.seen == [] and "pw-probe" not in msg and "sk-probe-secret" not in msg


def test_probe_slow_drip(servers):
    t = time.perf_counter()
    outcome, msg = _llm_failure(f"{servers[0]}/drip/v1", "timeout", timeout_s=2.0)
    assert outcome == "clear_error" and time.perf_counter() - t < 3.0, msg  # was 12 s at timeout_s=2 (issue 26)


@pytest.mark.parametrize("mode", ["huge", "flood", "bomb"])
def test_probe_huge_reply(servers, mode):
    outcome, msg = _llm_failure(f"{servers[0]}/{mode}/v1", "malformed_response", timeout_s=20)
    assert outcome == "clear_error" and "max_reply_bytes" in msg, msg


def test_probe_credentials_in_the_url_never_shown(servers):
    b = _backend(servers[0].replace("//", "//probe-user:probe-pw@") + "/ok/v1?api-key=probe-key")
    shown = json.dumps(b.describe())
    outcome, msg = _llm_failure(servers[0].replace("//", "//probe-user:probe-pw@") + "/err500/v1", "http_error")
    assert outcome == "clear_error"
    for secret in ("probe-user", "probe-pw", "probe-key"):
        assert secret not in shown and secret not in msg


def test_probe_cli_llm_spec_with_credentials(tmp_path):
    res = runner.invoke(
        app, ["feedback", "--results-dir", str(tmp_path / "r"), "--llm", "openai:http://u:probe-pw@127.0.0.1:99999/v1"]
    )
    assert res.exit_code == 2 and "--llm" in res.output and "probe-pw" not in res.output, res.output


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_probe_cli_llm_timeout(tmp_path, value):
    res = runner.invoke(
        app, ["feedback", "--results-dir", str(tmp_path / "r"), "--feedback-set", f"llm.timeout_s={value}"]
    )
    assert res.exit_code == 2 and "timeout_s" in res.output, res.output


@pytest.mark.parametrize(
    "text",
    [
        '{"query": ' * 100_000 + '"x"' + "}" * 100_000,
        '{"query": ' + "9" * 5000 + "}",
        "{" * 300_000,
        "\x00\xff garbage",
    ],
)
def test_probe_llm_reply_parsing(text):
    for parse in (parse_query, parse_questions):
        with pytest.raises(LLMError) as e:
            parse(text)
        assert e.value.reason == "invalid_output"


# -- concurrent saves and stale temporaries --------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_probe_concurrent_save(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.concurrent_save_script", str(tmp_path / "m"), f"w{k}", "25"],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    failures = [int(p.communicate(timeout=300)[0].strip()) for p in procs]
    assert failures == [0, 0, 0, 0]


def test_probe_stale_generation_temp(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kill_generation_script", str(tmp_path)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -9  # SIGKILL: no cleanup ran
    from benchmark.atomic import HOST
    from datamodules.synthetic.generation import is_complete
    from tests.kill_generation_script import OPTIONS

    final = OPTIONS.cache_dir(tmp_path)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(f".{final.name}.tmp-{HOST}-")]
    assert len(left) == 1 and left[0].is_dir() and not final.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    legacy = tmp_path / f".{final.name}.tmp-{dead.pid}-deadbeef"  # the name used before hosts were recorded
    legacy.mkdir()
    assert is_complete(ensure_generated(OPTIONS, tmp_path, workers=1))
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


@pytest.mark.slow
def test_probe_feedback_run_with_credentials_records_none(tmp_path, servers):
    """``bench feedback`` against a local server whose URL carries credentials: the run works and
    neither the result file, the transcript nor stdout shows them."""
    url = servers[0].replace("//", "//probe-user:probe-pw@") + "/err500/v1?api-key=probe-key"
    args = [
        "feedback",
        "--model",
        "clip",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--rounds",
        "1",
        "--display",
        "3",
        "--max-queries",
        "4",
        "--llm",
        f"openai:{url}",
        "--results-dir",
        str(tmp_path / "results"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--set",
        'data.options={"n_train": 96, "n_val": 16, "n_test": 40}',
        "--set",
        "data.batch_size=32",
        "--set",
        'model_args={"vision_layers": 1, "text_layers": 1, "vision_width": 32, "text_width": 32, "embed_dim": 16}',
        "--feedback-set",
        "llm.retries=0",
        "--feedback-set",
        "llm.retry_backoff_s=0",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    written = res.output + "".join(p.read_text() for p in (tmp_path / "results").iterdir())
    assert "http_error" in written and "//127.0.0.1" in written
    for secret in ("probe-user", "probe-pw", "probe-key"):
        assert secret not in written
