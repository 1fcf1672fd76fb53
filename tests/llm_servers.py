"""Local OpenAI-compatible test servers (127.0.0.1 only) that misbehave on purpose.

Behaviour by the first path segment: ``ok`` (a valid chat completion), ``redirect`` (307 to
the same path on ``REDIRECT_TARGET``), ``drip`` (declares 200 bytes, sends one every
``DRIP_S`` seconds, at most 60), ``huge`` (declares ``HUGE_BYTES`` in Content-Length),
``flood`` (no Content-Length, sends ``FLOOD_BYTES`` then closes), ``bomb`` (a gzip body of
``BOMB_BYTES`` zeros, ~10 kB compressed), ``err500``, ``deep`` (a valid completion whose
content is a JSON object nested ``DEEP`` levels). Every request's path and headers are kept
in ``Handler.seen`` of the server that got it.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

DRIP_S = 0.2
HUGE_BYTES = 64_000_000
FLOOD_BYTES = 3_000_000
BOMB_BYTES = 20_000_000
DEEP = 100_000


def completion(content: str) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
    ).encode()


def make_handler(redirect_to: str = ""):
    class Handler(BaseHTTPRequestHandler):
        seen: ClassVar[list[tuple[str, dict[str, str]]]] = []

        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, length: bool = True) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(n)
            Handler.seen.append((self.path, dict(self.headers.items())))
            mode = self.path.split("/")[1]
            try:
                if mode == "redirect":
                    self._send(307, b"", {"Location": f"{redirect_to}{self.path.replace('/redirect/', '/ok/', 1)}"})
                elif mode == "drip":
                    self.send_response(200)
                    self.send_header("Content-Length", "200")
                    self.end_headers()
                    for _ in range(60):  # bounded: 12 s at most
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(DRIP_S)
                elif mode == "huge":
                    self.send_response(200)
                    self.send_header("Content-Length", str(HUGE_BYTES))
                    self.end_headers()
                    self.wfile.write(b" " * 65536)
                elif mode == "flood":
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for _ in range(FLOOD_BYTES // 65536):
                        self.wfile.write(b" " * 65536)
                elif mode == "bomb":
                    self._send(200, gzip.compress(b"0" * BOMB_BYTES), {"Content-Encoding": "gzip"})
                elif mode == "err500":
                    self._send(500, b"internal error")
                elif mode == "deep":
                    self._send(200, completion('{"query": ' * DEEP + '"x"' + "}" * DEEP))
                else:
                    self._send(
                        200, completion(json.dumps({"query": "a red circle"})), {"Content-Type": "application/json"}
                    )
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: what is tested
                pass

    return Handler


@contextmanager
def serve(redirect_to: str = "") -> Iterator[tuple[str, type]]:
    """A server on 127.0.0.1 (a free port) for the block: ``(base URL, its handler class)``."""
    handler = make_handler(redirect_to)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
