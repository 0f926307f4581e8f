"""The HTTP API: health, status, facts, jobs, versions, quarantine, pushes and generation.

Every response is JSON; errors are ``{"error": "..."}``. ``GET /openapi.json`` serves
the OpenAPI description of every route (``factsync.daemon.openapi``), the one list of
what the API offers. Mutating endpoints (``POST /facts``, ``POST /facts/retry``,
``POST /facts/revert``, ``POST /rollback``)
require ``Authorization: Bearer <token>`` once a token is configured; tokens are
compared in constant time and never logged. Bodies larger than the configured limit
are refused with 413. A state store that cannot write (disk full, read-only, locked)
answers 503 so that clients retry; only bugs answer 500.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from factsync.daemon.ingest import Ingest
from factsync.daemon.openapi import api_document
from factsync.jobs.model_state import ModelState
from factsync.store.faults import unwritable_reason
from factsync.store.records import StoreError
from factsync.store.store import StateStore

log = logging.getLogger(__name__)

MAX_GENERATED_TOKENS = 256
MAX_PROMPT_CHARS = 1000
"""Longest ``POST /generate`` prompt: a spot check needs a sentence or two, and the
serving model is locked while it generates."""
MAX_LIST_LIMIT = 1000
"""Largest ``limit`` of a listing, so that one response stays a few megabytes."""
MAX_BODY_DEPTH = 32
"""Deepest nesting of a JSON body; fact rows need 3, and deeper input only costs stack."""
MAX_ID = 2**63 - 1
"""Largest id SQLite stores (a signed 64-bit integer)."""

class ApiError(Exception):
    """An error answered to the client with ``status`` and ``message``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ApiContext:
    """What the API reads and acts on."""

    store: StateStore
    ingest: Ingest
    models: Callable[[], ModelState | None]
    status: Callable[[], dict[str, Any]]
    wake: Callable[[], None]
    rollback: Callable[[str | None], dict]
    token: str | None
    max_body_bytes: int


class ApiServer:
    """A threaded HTTP server on ``host:port`` (port 0 picks a free one); ``start`` binds
    the port and serves."""

    def __init__(self, context: ApiContext, *, host: str, port: int) -> None:
        self._handler = type("Handler", (_Handler,), {"context": context})
        self._wanted = (host, port)
        self._server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), once started."""
        if self._server is None:
            raise RuntimeError("the API server has not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind the port and serve in a background thread."""
        self._server = ThreadingHTTPServer(self._wanted, self._handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="api", daemon=True).start()
        log.info("API listening on http://%s:%d", *self.address)

    def stop(self) -> None:
        """Stop serving and close the socket, if it was started."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    context: ApiContext
    server_version = "factsync"
    protocol_version = "HTTP/1.1"
    _body_read = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Errors http.server answers itself (bad request line, unknown method) as JSON."""
        self.close_connection = True
        status = HTTPStatus(code)
        self._send(status, {"error": message or status.phrase})

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.split("/") if p]
        self._body_read = False
        try:
            route = _ROUTES.get((method, parts[0] if parts else "", len(parts)))
            if route is None:
                if any(key[1:] == ((parts[0] if parts else ""), len(parts)) for key in _ROUTES):
                    raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed here")
                raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {url.path}")
            handler, mutating = route
            if mutating:
                self._authorise()
            body = self._body() if method == "POST" else None
            status, payload = handler(self.context, parts, query, body)
        except ApiError as exc:
            status, payload = exc.status, {"error": exc.message}
        except Exception as exc:
            reason = unwritable_reason(exc)
            if reason is None:
                log.exception("API %s %s failed", method, url.path)
                status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}
            else:
                log.error("API %s %s: the state store cannot write (%s)", method, url.path,
                          reason)
                status = HTTPStatus.SERVICE_UNAVAILABLE
                payload = {"error": f"the state store cannot write right now ({reason}); "
                                    "retry later"}
        if not self._body_read and (self.headers.get("Content-Length", "0") != "0"
                                    or "Transfer-Encoding" in self.headers):
            # The body is still in the socket and would be read as the next request.
            self.close_connection = True
        self._send(status, payload)

    def _authorise(self) -> None:
        token = self.context.token
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        try:
            size = int(length)
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from exc
        if size < 0:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"Content-Length is negative ({size})")
        if size > self.context.max_body_bytes:
            self.close_connection = True
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"body of {size} bytes is over the {self.context.max_body_bytes} limit")
        raw = self.rfile.read(size)
        self._body_read = True
        try:
            body = json.loads(raw or b"null", parse_constant=_no_constant)
        except RecursionError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST,
                           f"body is nested more than {MAX_BODY_DEPTH} levels deep") from exc
        except ValueError as exc:  # also bad UTF-8, NaN, and integers of over 4300 digits
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from exc
        _check_body(body)
        return body

    def _send(self, status: HTTPStatus, payload: Any) -> None:
        data = json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")  # so that the client does not reuse it
        self.end_headers()
        self.wfile.write(data)


Result = tuple[HTTPStatus, Any]


def _health(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    return HTTPStatus.OK, {"status": "ok"}


def _ready(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    status = ctx.status()
    code = HTTPStatus.OK if status["ready"] else HTTPStatus.SERVICE_UNAVAILABLE
    return code, {"ready": status["ready"], "reason": status.get("starting", "")}


def _status(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    return HTTPStatus.OK, ctx.status()


def _facts(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    return HTTPStatus.OK, ctx.store.fact_views(
        subject=query.get("subject"), relation=query.get("relation"), state=query.get("state"))


def _jobs(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    limit = _int(query.get("limit", "100"), "limit", low=1, high=MAX_LIST_LIMIT)
    return HTTPStatus.OK, [j.as_dict() for j in ctx.store.jobs(state=query.get("state"),
                                                               limit=limit)]


def _job(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    job_id = _int(parts[1], "job id", low=1, high=MAX_ID)
    try:
        job = ctx.store.job(job_id=job_id)
    except KeyError as exc:
        raise ApiError(HTTPStatus.NOT_FOUND, f"no job {job_id}") from exc
    return HTTPStatus.OK, {
        **job.as_dict(),
        "events": [e.as_dict() for e in ctx.store.job_events(job_id=job_id)],
        "changes": [c.as_dict() for c in ctx.store.changes(job_id=job_id)],
    }


def _versions(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    return HTTPStatus.OK, ctx.store.version_rows(ctx.store.versions())


def _version(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    try:
        version = ctx.store.version(version_id=parts[1])
    except KeyError as exc:
        raise ApiError(HTTPStatus.NOT_FOUND, f"no version {parts[1]}") from exc
    return HTTPStatus.OK, ctx.store.version_rows([version])[0]


def _quarantine(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    limit = _int(query.get("limit", "100"), "limit", low=1, high=MAX_LIST_LIMIT)
    return HTTPStatus.OK, [q.as_dict() for q in ctx.store.quarantined(limit=limit)]


def _push(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    rows = body.get("facts") if isinstance(body, dict) else body
    if not isinstance(rows, list):
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       "expected a JSON list of fact rows, or {\"facts\": [...]}")
    batch = f"push-{time.time_ns()}"
    result = ctx.ingest.push(rows, source="api", batch=batch)
    return HTTPStatus.ACCEPTED, {"batch": batch, **result.__dict__}


def _fact_action(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    """``POST /facts/retry`` and ``POST /facts/revert``."""
    if parts[1] not in ("retry", "revert"):
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint /facts/{parts[1]}")
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), str) for k in ("subject", "relation")
    ):
        raise ApiError(HTTPStatus.BAD_REQUEST, "expected {\"subject\": str, \"relation\": str}")
    subject, relation = body["subject"], body["relation"]
    if parts[1] == "retry":
        change = ctx.store.retry(subject=subject, relation=relation)
        if change is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "no desired fact with that subject and relation")
    else:
        try:
            change = ctx.store.revert(subject=subject, relation=relation)
        except KeyError as exc:
            raise ApiError(HTTPStatus.NOT_FOUND, str(exc).strip("\"")) from exc
    ctx.wake()
    return HTTPStatus.ACCEPTED, change.as_dict()


def _weights(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    models = ctx.models()
    if models is None:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the model is still loading")
    return HTTPStatus.OK, {"version": ctx.store.live_version().id,
                           "sha256": models.digest(serving=True)}


def _rollback(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    target = body.get("to") if isinstance(body, dict) else None
    if body is not None and not isinstance(body, dict) or not isinstance(target, (str, type(None))):
        raise ApiError(HTTPStatus.BAD_REQUEST, "expected {} or {\"to\": \"<version id>\"}")
    try:
        result = ctx.rollback(target)
    except (ValueError, KeyError, StoreError) as exc:
        raise ApiError(HTTPStatus.CONFLICT, str(exc).strip("'\"")) from exc
    except RuntimeError as exc:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from exc
    return (HTTPStatus.ACCEPTED if result["queued"] else HTTPStatus.OK), result


def _generate(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       "expected {\"prompt\": str, \"max_new_tokens\": int}")
    tokens = body.get("max_new_tokens", 16)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not (
        1 <= tokens <= MAX_GENERATED_TOKENS
    ):
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       f"max_new_tokens must be an integer in 1..{MAX_GENERATED_TOKENS}")
    if not body["prompt"].strip():
        raise ApiError(HTTPStatus.BAD_REQUEST, "prompt is empty")
    if len(body["prompt"]) > MAX_PROMPT_CHARS:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"prompt is {len(body['prompt'])} characters, "
                                               f"more than {MAX_PROMPT_CHARS}")
    models = ctx.models()
    if models is None:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the model is still loading")
    return HTTPStatus.OK, {"text": models.generate(body["prompt"], tokens)}


def _openapi(ctx: ApiContext, parts: list[str], query: dict, body: Any) -> Result:
    return HTTPStatus.OK, api_document(max_list_limit=MAX_LIST_LIMIT, max_id=MAX_ID,
                                       max_generated_tokens=MAX_GENERATED_TOKENS,
                                       max_prompt_chars=MAX_PROMPT_CHARS)


def _int(value: str, name: str, *, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       f"{name} must be an integer, got {value[:40]!r}") from exc
    if not low <= number <= high:
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       f"{name} must be an integer in {low}..{high}, got {value[:40]}")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_body(body: Any) -> None:
    """Refuse bodies nested deeper than ``MAX_BODY_DEPTH`` or holding lone surrogates.

    ``json.loads`` accepts ``"\\ud800"`` escapes, which no text store can encode.
    """
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            texts, children = list(value), list(value.values())
        elif isinstance(value, list):
            texts, children = [], value
        else:
            texts, children = ([value] if isinstance(value, str) else []), []
        if children and depth >= MAX_BODY_DEPTH:
            raise ApiError(HTTPStatus.BAD_REQUEST,
                           f"body is nested more than {MAX_BODY_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ApiError(HTTPStatus.BAD_REQUEST,
                               "body holds a lone surrogate escape (\\ud800-\\udfff), "
                               "which is not text") from exc


Handler = Callable[[ApiContext, list[str], dict, Any], Result]

_ROUTES: dict[tuple[str, str, int], tuple[Handler, bool]] = {
    ("GET", "healthz", 1): (_health, False),
    ("GET", "readyz", 1): (_ready, False),
    ("GET", "status", 1): (_status, False),
    ("GET", "facts", 1): (_facts, False),
    ("GET", "jobs", 1): (_jobs, False),
    ("GET", "jobs", 2): (_job, False),
    ("GET", "versions", 1): (_versions, False),
    ("GET", "versions", 2): (_version, False),
    ("GET", "quarantine", 1): (_quarantine, False),
    ("GET", "weights", 1): (_weights, False),
    ("POST", "facts", 1): (_push, True),
    ("POST", "facts", 2): (_fact_action, True),
    ("POST", "generate", 1): (_generate, False),
    ("POST", "rollback", 1): (_rollback, True),
    ("GET", "openapi.json", 1): (_openapi, False),
}
"""(method, first path segment, number of segments) -> (handler, needs the token)."""
