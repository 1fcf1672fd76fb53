"""``bench serve``'s set-up: options, the CLI's refusals, binding, the gallery encoding cache,
and a server that cannot load its model or data (cheap: nothing is trained or encoded)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.config import ConfigError
from benchmark.feedback.config import FeedbackConfig
from benchmark.run_flags import CliConfig
from benchmark.serve import encoding_cache as ec
from benchmark.serve.config import ServeConfig, is_loopback
from benchmark.serve.server import bind, build_state, url_of
from lightning_modules.base import Encoded


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": -1}, "--port must be an integer in [0, 65535]"),
        ({"port": 65536}, "--port must be an integer in [0, 65535]"),
        ({"port": math.nan}, "got NaN"),
        ({"port": True}, "--port"),
        ({"top_k": 0}, "--top-k must be an integer in [1, 100]"),
        ({"top_k": 101}, "--top-k"),
        ({"host": ""}, "--host"),
        ({"host": "a b"}, "--host"),
        ({"thumbnail_px": 8}, "--thumbnail-px"),
    ],
)
def test_serve_config_refuses_out_of_range_options(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ServeConfig(**kwargs)


def test_serve_config_bounds_are_inclusive_and_loopback_is_detected():
    assert ServeConfig(port=0).port == 0 and ServeConfig(port=65535).port == 65535
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.2", "example.org", "::"))
    assert ServeConfig().loopback and not ServeConfig(host="0.0.0.0").loopback


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port must be an integer in [0, 65535], got 70000"),
        (["--top-k", "0"], "--top-k"),
        (["--model", "nope"], "nope"),
        (["--llm", "bogus"], "--llm"),
    ],
)
def test_cli_refuses_bad_options_with_exit_2(tmp_path, args, message):
    r = CliRunner().invoke(app, ["serve", "--cache-dir", str(tmp_path), "--results-dir", str(tmp_path), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_bind_port_zero_picks_a_free_port_and_a_busy_port_is_refused():
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0 and url_of(sock) == f"http://127.0.0.1:{port}/"
        sock.listen()
        with pytest.raises(ConfigError, match=f"--port {port}: cannot listen there"):
            bind("127.0.0.1", port)
    finally:
        sock.close()
    with pytest.raises(ConfigError, match="cannot be resolved"):
        bind("no-such-host.invalid", 0)


def _cfg(tmp_path, **given):
    return CliConfig(
        given={"cache_dir": str(tmp_path / "cache"), "results_dir": str(tmp_path / "res"), **given}
    ).build()


def test_no_train_and_no_checkpoint_serves_the_command_that_trains_it(tmp_path):
    state = build_state(_cfg(tmp_path, model="clip"), FeedbackConfig(), ServeConfig(train=False))
    assert state.loaded is None
    assert "bench run --model clip --dataset synthetic --seed 0" in state.unavailable
    assert "without --no-train" in state.unavailable


def test_a_missing_data_root_is_a_message_not_a_crash(tmp_path):
    cfg = _cfg(tmp_path, model="clip", dataset="folder", data_root=str(tmp_path / "absent"), checkpoint=None)
    state = build_state(cfg, FeedbackConfig(), ServeConfig(train=False))
    assert state.loaded is None and str(tmp_path / "absent") in state.unavailable


def test_gallery_encodings_round_trip_and_a_damaged_file_is_encoded_again(tmp_path):
    enc = Encoded(torch.randn(5, 3, 4), torch.tensor([1, 2, 3, 1, 2]), {"pooled": torch.randn(5, 4)})
    path = tmp_path / "serve" / "g.safetensors"
    calls = []

    def encode():
        calls.append(1)
        return [(torch.arange(0, 2), enc[:2]), (torch.arange(2, 5), enc[2:])]

    first, now = ec.load_or_encode(path, encode, 5)
    assert torch.equal(first.emb, enc.emb)
    second, again = ec.load_or_encode(path, encode, 5)
    assert now and not again and len(calls) == 1
    assert torch.equal(second.emb, enc.emb) and torch.equal(second.lengths, enc.lengths)
    assert torch.equal(second.extra["pooled"], enc.extra["pooled"])
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    del first, second  # mapped: a file truncated under a live mapping is not read again
    damaged = path.read_bytes()[:40]
    path.unlink()
    path.write_bytes(damaged)  # truncated
    third, now = ec.load_or_encode(path, encode, 5)
    assert now and len(calls) == 2 and torch.equal(third.emb, enc.emb)
    six = Encoded.cat([enc, enc[:1]])
    fourth, again = ec.load_or_encode(path, lambda: [(torch.arange(6), six)], 6)  # another size: encoded again
    assert again and len(fourth) == 6


def test_cache_key_follows_the_checkpoint_and_the_split(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"a")
    split = ec.split_identity(("a", "b"), {"split": "test"}, {})
    key = ec.cache_key("clip", ec.checkpoint_identity(ckpt), split)
    assert key == ec.cache_key("clip", ec.checkpoint_identity(ckpt), split)
    assert key != ec.cache_key("clip", ec.checkpoint_identity(ckpt), ec.split_identity(("a",), {"split": "test"}, {}))
    assert key != ec.cache_key("ours", ec.checkpoint_identity(ckpt), split)
    st = (ckpt / "model.safetensors").stat()
    os.utime(ckpt / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # retrained in place
    assert key != ec.cache_key("clip", ec.checkpoint_identity(ckpt), split)
    assert ec.checkpoint_identity("org/model") == {"checkpoint": "org/model"}


@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_serve_warns_off_loopback_and_prints_the_bound_address(tmp_path, monkeypatch, capsys, host, warned):
    import uvicorn

    from benchmark.serve import server
    from benchmark.serve.app import AppState

    ran = []
    monkeypatch.setattr(server, "build_state", lambda *a, **k: AppState(None, tmp_path / "x.jsonl", unavailable="no"))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: ran.append(sockets[0].getsockname()))
    server.serve(_cfg(tmp_path, model="clip"), FeedbackConfig(), ServeConfig(host=host, port=0))
    out, err = capsys.readouterr()
    assert ("no authentication" in err) is warned
    assert ran and out.strip().endswith(f"serving on http://{host}:{ran[0][1]}/")
    assert "error: no" in err
