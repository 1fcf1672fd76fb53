"""Start a server: bind the port, load the model and gallery, serve the app with uvicorn.

The port is bound first (``--port 0``: a free one chosen by the system), so a port in use
fails at once with a clear message; the address actually bound is printed as ``serving on
http://HOST:PORT/`` once the app is ready (tests and scripts read that line). A host that is
not a loopback address is served with a warning: the app has no authentication. A model or
data that cannot be loaded (no trained checkpoint with ``--no-train``, a missing data root)
does not stop the server: the page and every API call answer with the message, which names
the fix.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import uvicorn

from benchmark.config import ConfigError, RunConfig
from benchmark.feedback.config import FeedbackConfig
from benchmark.serve.app import AppState, create_app
from benchmark.serve.config import ServeConfig
from benchmark.serve.loading import load
from datamodules.base import DataError


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``(host, port)`` (IPv4 or IPv6, as ``host`` resolves)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host!r}: cannot be resolved ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def export_path(cfg: RunConfig) -> Path:
    return Path(cfg.results_dir) / f"serve__{cfg.model}__{cfg.dataset}__{cfg.tag}.jsonl"


def build_state(cfg: RunConfig, fb: FeedbackConfig, sc: ServeConfig, *, progress: bool = False) -> AppState:
    """A ready state, or an unavailable one whose message says what to fix."""
    try:
        return AppState(load(cfg, fb, sc, progress=progress), export_path(cfg))
    except (ConfigError, DataError) as e:
        return AppState(None, export_path(cfg), unavailable=str(e))


def serve(cfg: RunConfig, fb: FeedbackConfig, sc: ServeConfig, *, progress: bool = False) -> None:
    if not sc.loopback:
        print(
            f"warning: serving on {sc.host}, which other machines may reach; the app has no authentication "
            "(use the default --host 127.0.0.1 unless you mean it)",
            file=sys.stderr,
            flush=True,
        )
    sock = bind(sc.host, sc.port)
    state = build_state(cfg, fb, sc, progress=progress)
    if state.loaded is None:
        print(f"error: {state.unavailable}", file=sys.stderr, flush=True)
    else:
        info = state.loaded.info
        print(
            f"{info['model']} on {info['dataset']} ({info['split']}, {info['n_images']} images; gallery "
            f"{'encoded now' if info['gallery_encoded_now'] else 'from the cache'}: {info['gallery_cache']})",
            flush=True,
        )
    print(f"serving on {url_of(sock)}", flush=True)
    config = uvicorn.Config(create_app(state), log_level="warning", access_log=False, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
