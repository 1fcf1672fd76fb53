"""The web app: one HTML page (a Jinja2 template, autoescaped), its script and style served
from the package, and a small JSON API over a :class:`~benchmark.serve.engine.Searcher`.

Routes: ``GET /`` (the page), ``GET /static/...`` (``app.js``, ``app.css``), ``GET /api/info``,
``POST /api/search`` ``{"query"}``, ``GET /api/searches/{id}``, ``POST
/api/searches/{id}/refresh`` and ``/questions`` ``{"relevant": [...], "not_relevant": [...]}``
(gallery indices of shown items), ``POST /api/searches/{id}/answers`` ``{"answers": [...]}``,
``GET /api/export`` (every search so far as JSON Lines in ``bench feedback``'s transcript
schema, also written atomically to ``export_path``; ``?search=ID`` for one) and ``GET
/thumbs/{index}.png``.

Every error is JSON ``{"error": message}`` with a 4xx/5xx status, never a stack trace: bad
input (:class:`~benchmark.serve.engine.SearchError`, request validation), a server that could
not load its model or data (503, with the message saying how to fix it -- e.g. the command
that trains the model), and anything unexpected (500, the exception's type and message only).
Responses carry a Content-Security-Policy that admits only this server's own script, style
and images: the page loads nothing from elsewhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from benchmark.feedback.transcript import JsonlWriter
from benchmark.serve.config import MAX_QUERY_CHARS, MAX_TOP_K
from benchmark.serve.engine import SearchError
from benchmark.serve.loading import Loaded
from benchmark.serve.search import Search
from benchmark.serve.thumbnails import ThumbnailError

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_ANSWERS = 16


class QueryIn(BaseModel):
    query: str = Field(max_length=4 * MAX_QUERY_CHARS)


class MarksIn(BaseModel):
    relevant: list[int] = Field(default_factory=list, max_length=MAX_TOP_K)
    not_relevant: list[int] = Field(default_factory=list, max_length=MAX_TOP_K)


class AnswersIn(BaseModel):
    answers: list[str] = Field(max_length=MAX_ANSWERS)


@dataclass
class AppState:
    """A ready server (``loaded``) or one that could not load (``unavailable``: why, and the fix)."""

    loaded: Loaded | None
    export_path: Path
    unavailable: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # one request at a time changes a search

    def ready(self) -> Loaded:
        if self.loaded is None:
            raise SearchError(self.unavailable or "the server has no model loaded", 503)
        return self.loaded


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def view(loaded: Loaded, s: Search) -> dict[str, Any]:
    """What the page shows of a search now."""
    g = loaded.searcher.gallery
    last = s.rounds[-1] if s.rounds else None
    return {
        "search": s.index,
        "query": s.query,
        "current_query": s.current_query,
        "query_length": s.query_length,
        "rounds": len(s.rounds),
        "excluded": int(s.excluded.sum()),
        "results": [
            {
                "index": i,
                "image_id": g.image_ids[i],
                "score": round(float(s.scores[i]), 4),
                "caption": g.captions[i],
                "thumb": f"/thumbs/{i}.png",
            }
            for i in s.shown
        ],
        "pending": None
        if s.pending is None
        else {"questions": [{"question": q.question, "options": list(q.options)} for q in s.pending.questions]},
        "last_round": None
        if last is None
        else {k: last.get(k) for k in ("round", "kind", "fallback", "refined_query", "questions")},
    }


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(title="instructsee-bench serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    pages = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(SearchError)
    async def search_error(request: Request, e: SearchError) -> JSONResponse:
        return _error(str(e), e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(f"bad request: {where or 'body'}: {first.get('msg', 'invalid input')}", 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(str(e.detail), e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        return _error(f"internal error ({type(e).__name__}: {str(e)[:300]})", 500)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        info = state.loaded.info if state.loaded is not None else {}
        html = pages.get_template("index.html").render(info=info, unavailable=state.unavailable)
        return HTMLResponse(html, status_code=200 if state.loaded is not None else 503)

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        if state.loaded is None:
            return {"ready": False, "error": state.unavailable}
        return {"ready": True, "top_k": state.loaded.searcher.top_k} | state.loaded.info

    @app.post("/api/search")
    def search(body: QueryIn) -> dict[str, Any]:
        loaded = state.ready()
        with state.lock:
            return view(loaded, loaded.searcher.search(body.query))

    @app.get("/api/searches/{index}")
    def get_search(index: int) -> dict[str, Any]:
        loaded = state.ready()
        with state.lock:
            return view(loaded, loaded.searcher.get(index))

    @app.post("/api/searches/{index}/refresh")
    def refresh(index: int, body: MarksIn) -> dict[str, Any]:
        loaded = state.ready()
        with state.lock:
            return view(loaded, loaded.searcher.refresh(index, body.relevant, body.not_relevant))

    @app.post("/api/searches/{index}/questions")
    def questions(index: int, body: MarksIn) -> dict[str, Any]:
        loaded = state.ready()
        with state.lock:
            return view(loaded, loaded.searcher.ask(index, body.relevant, body.not_relevant))

    @app.post("/api/searches/{index}/answers")
    def answers(index: int, body: AnswersIn) -> dict[str, Any]:
        loaded = state.ready()
        with state.lock:
            return view(loaded, loaded.searcher.answer(index, body.answers))

    @app.get("/api/export")
    def export(search: int | None = None) -> Response:
        loaded = state.ready()
        searcher = loaded.searcher
        with state.lock:
            chosen = [searcher.get(search)] if search is not None else list(searcher.searches.values())
            lines = [s.transcript_line(searcher.gallery.image_ids) for s in chosen]
            with JsonlWriter(state.export_path) as sink:  # the transcript writer of bench feedback
                for line in lines:
                    sink.write(line)
            data = state.export_path.read_bytes()
        return Response(
            data,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{state.export_path.name}"'},
        )

    @app.get("/thumbs/{index}.png")
    def thumb(index: int) -> Response:
        loaded = state.ready()
        try:
            with state.lock:
                data = loaded.thumbnails.png(index)
            return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
        except ThumbnailError as e:
            raise SearchError(str(e), 404) from None

    return app
