"""The label web app: FastAPI, a router per concern (pages, votes, admin), one dependency that checks every token.

Every error is a JSON `{"error": …}` with a status that says what went wrong (400 malformed, 401 no or unknown
token, 403 not yours, 404, 409 already answered, 413 too large, 422 not a valid vote), never a 500 for a bad request.
No request value reaches a filesystem path: the page and its two assets are files of this package, chosen by name.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kochat_human.export import export_records
from kochat_human.project import guidelines
from kochat_human.schemas import ItemOut, NextOut, Progress, UndoIn, UndoOut, VoteIn, VoteOut
from kochat_human.status import json_safe, project_status
from kochat_human.store import Annotator, LabelStore, Refusal

MAX_BODY_BYTES = 16 * 1024
STATIC = {"label.js": "text/javascript", "label.css": "text/css"}
# The page runs only its own script and style: even a model text that slipped into the markup could run nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page's address holds the person's token
    "Cache-Control": "no-store",
}


def _asset(name: str) -> str:
    return resources.files("kochat_human").joinpath("static", name).read_text(encoding="utf-8")


def store_of(request: Request) -> LabelStore:
    return request.app.state.store


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "no token: send the one of your invite link as 'Authorization: Bearer TOKEN'")
    return token.strip()


def annotator(request: Request, store: LabelStore = Depends(store_of)) -> Annotator:
    """The invited person a request comes from (401 without a token that names one)."""
    token = _bearer(request)
    person = store.annotator_by_token(token)
    if person is None:
        raise HTTPException(401, "unknown token: open the invite link you were given")
    return person


def admin(request: Request, store: LabelStore = Depends(store_of)) -> None:
    """Only the admin token printed by `kochat label serve` (403 for a person's token)."""
    token = _bearer(request)
    if token != store.admin_token:
        raise HTTPException(403 if store.annotator_by_token(token) else 401, "the admin token printed by `kochat label serve` is needed")


pages = APIRouter()


@pages.get("/", response_class=HTMLResponse)
def home() -> HTMLResponse:
    return HTMLResponse("<!doctype html><meta charset=utf-8><title>kochat label</title>"
                        "<p>kochat label: open the invite link you were given.</p>", headers=SECURITY_HEADERS)


@pages.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)


@pages.get("/label/{token}", response_class=HTMLResponse)
def page(token: str, store: LabelStore = Depends(store_of)) -> HTMLResponse:
    if store.annotator_by_token(token) is None:
        return HTMLResponse("<!doctype html><meta charset=utf-8><title>kochat label</title><p>This invite link is not valid.</p>",
                            status_code=401, headers=SECURITY_HEADERS)
    return HTMLResponse(_asset("label.html"), headers=SECURITY_HEADERS)


@pages.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404, "no such file")
    return Response(_asset(name), media_type=STATIC[name], headers=SECURITY_HEADERS)


votes = APIRouter(prefix="/api")


@votes.get("/next", response_model=NextOut)
def next_item(request: Request, person: Annotator = Depends(annotator), store: LabelStore = Depends(store_of)) -> NextOut:
    found = store.next_item(person)
    item = None
    if found is not None:
        shown, order = found
        item = ItemOut(id=shown.id, prompt=shown.prompt, answers=[shown.completions[answer] for answer in order])
    done, total = store.progress(person)
    return NextOut(annotator=person.name, progress=Progress(done=done, total=total), item=item, last_vote=store.last_vote(person),
                   guidelines=guidelines(request.app.state.project))


@votes.post("/votes", response_model=VoteOut)
def vote(body: VoteIn, person: Annotator = Depends(annotator), store: LabelStore = Depends(store_of)) -> VoteOut:
    stored = store.record(person, body.item, body.kind, body.ranking, body.client_vote_id, body.seconds)
    return VoteOut(stored=stored)


@votes.post("/undo", response_model=UndoOut)
def undo(body: UndoIn, person: Annotator = Depends(annotator), store: LabelStore = Depends(store_of)) -> UndoOut:
    return UndoOut(undone=store.undo(person, body.client_vote_id))


administration = APIRouter(prefix="/api/admin", dependencies=[Depends(admin)])


@administration.get("/status")
def status(store: LabelStore = Depends(store_of)) -> Response:
    return JSONResponse(json_safe(project_status(store)))


@administration.get("/export")
def export(store: LabelStore = Depends(store_of), format: str = Query("kochatgpt", pattern="^(kochatgpt|trl|votes)$"),
           min_annotators: int = Query(1, ge=1, le=1000)) -> Response:
    records, vote_lines, _ = export_records(store, "kochatgpt" if format == "votes" else format, min_annotators)
    rows = vote_lines if format == "votes" else records
    return Response("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), media_type="application/x-ndjson")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


def _validation_message(err: RequestValidationError) -> tuple[int, str]:
    problems = err.errors()
    if any(problem["type"] == "json_invalid" for problem in problems):
        return 400, "the body is not valid JSON"
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    return 422, f"{where}: {first['msg']}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413, whether or not it says its length up front (ASGI middleware:
    Starlette has no body cap of its own)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _error(413, f"the body is over {self.limit} bytes")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"the body is over {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


def create_app(project: Path, store: LabelStore) -> FastAPI:
    app = FastAPI(title="kochat label", docs_url=None, redoc_url=None, openapi_url=None)  # no schema pages on a shared server
    app.state.project, app.state.store = Path(project), store
    for router in (pages, votes, administration):
        app.include_router(router)
    app.add_exception_handler(Refusal, lambda request, err: _error(err.status, str(err)))
    app.add_exception_handler(StarletteHTTPException, lambda request, err: _error(err.status_code, str(err.detail)))
    app.add_exception_handler(RequestValidationError, lambda request, err: _error(*_validation_message(err)))
    app.add_middleware(BodyLimit)
    return app

