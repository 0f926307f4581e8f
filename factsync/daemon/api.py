"""The HTTP API: a FastAPI application, served by uvicorn in a background thread.

Every response is JSON; errors are ``{"error": "..."}``. ``GET /openapi.json`` serves
the OpenAPI document FastAPI generates from the routes (``factsync.daemon.api_routes``)
and their models (``factsync.daemon.api_models``), the one list of what the API offers.
Mutating endpoints (``POST /facts``, ``POST /facts/retry``, ``POST /facts/revert``,
``POST /rollback``) require ``Authorization: Bearer <token>`` once a token is
configured; tokens are compared in constant time and never logged. Bodies larger than
the configured limit are refused with 413 and never kept. A state store that
cannot write (disk full, read-only, locked) answers 503 so that clients retry; only
bugs answer 500.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from factsync import __version__
from factsync.daemon.api_protocol import ApiError, body_schemas
from factsync.daemon.api_routes import BODY_MODELS, ApiContext, router
from factsync.daemon.console import console_router
from factsync.store.faults import unwritable_reason

log = logging.getLogger(__name__)

METHODS = frozenset({"GET", "POST"})
"""Methods the API answers at all; any other gets 501, as from ``http.server``."""
STOP_GRACE_SECONDS = 5
"""How long ``ApiServer.stop`` lets requests in flight finish before cancelling them."""
START_TIMEOUT_SECONDS = 30.0
DRAIN_BYTES = 1 << 20
"""Largest body read and dropped, unread by its handler, to keep the connection open."""
DESCRIPTION = ("Keeps a language model's facts current. Every response is JSON; errors are "
               "{\"error\": \"...\"}. Mutating endpoints need `Authorization: Bearer <token>` "
               "once api.token is configured.")


def build_app(context: ApiContext) -> FastAPI:
    """The API on ``context`` as a FastAPI application.

    More routers may be included; their handlers reach the same context through the
    ``api_routes.api_context`` dependency, and their errors are answered as JSON too.
    """
    app = FastAPI(title="factsync", version=__version__, description=DESCRIPTION,
                  docs_url=None, redoc_url=None)
    app.state.context = context
    app.include_router(router)
    app.include_router(console_router(context))
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_parameter)
    app.add_middleware(_Guard)
    app.openapi = _document(app)
    return app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.message)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors: no route for the path, or not for this method."""
    if exc.status_code == HTTPStatus.NOT_FOUND and "endpoint" not in request.scope:
        raw_path = request.scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else request.url.path
        return _error(exc.status_code, f"no such endpoint {path}")
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        return _error(exc.status_code, f"{request.method} not allowed here", exc.headers)
    return _error(exc.status_code, str(exc.detail), exc.headers)


async def _invalid_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A query or path parameter that did not validate: 400, as always, not 422."""
    error = exc.errors()[0]
    if error["type"] == "parameter":  # ours, from api_routes, worded for an operator
        return _error(HTTPStatus.BAD_REQUEST, error["msg"])
    return _error(HTTPStatus.BAD_REQUEST, f"{error['loc'][-1]}: {error['msg']}")


def _failure(scope: Scope, exc: Exception) -> JSONResponse:
    """The answer to an exception no handler took: 503 if the store cannot write, else 500."""
    where = f"{scope['method']} {scope['path']}"
    reason = unwritable_reason(exc)
    if reason is None:
        log.error("API %s failed", where, exc_info=exc)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
    log.error("API %s: the state store cannot write (%s)", where, reason)
    return _error(HTTPStatus.SERVICE_UNAVAILABLE,
                  f"the state store cannot write right now ({reason}); retry later")


class _Exchange:
    """One request and its response as the guard sees them.

    A response that starts before the handler read the body (401, 413, a bad
    parameter) first reads and drops a body of at most ``DRAIN_BYTES``: closing a
    socket that still holds unread bytes makes the kernel reset the connection, and the
    client can lose the answer it was reading. A larger or unsized body is left unread
    and the connection closed after the answer, since otherwise its bytes would be
    read as the next request.
    """

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        chunked = b"transfer-encoding" in headers
        self.body_read = length == b"0" and not chunked
        self.drainable = not chunked and length.isdigit() and int(length) <= DRAIN_BYTES
        self.status: int | None = None
        self._receive = receive
        self._send = send

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.body_read = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            while not self.body_read and self.drainable:
                await self.receive()
            if not self.body_read:
                message = {**message,
                           "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await self._send(message)


class _Guard:
    """Around the whole application: answers unknown methods with 501, closes the
    connection on an unread body, turns any exception left into a JSON 500 or 503, and
    logs each request at DEBUG (method, path and status; never a header)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send)
        try:
            if scope["method"] in METHODS:
                await self.app(scope, exchange.receive, exchange.send)
            else:
                answer = _error(HTTPStatus.NOT_IMPLEMENTED,
                                f"Unsupported method ({scope['method']!r})")
                await answer(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if exchange.status is not None:
                raise
            await _failure(scope, exc)(scope, exchange.receive, exchange.send)
        query = scope.get("query_string", b"").decode("latin-1")
        log.debug("%s \"%s %s%s\" %s", _client(scope), scope["method"], scope["path"],
                  f"?{query}" if query else "", exchange.status)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _document(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` completed with what FastAPI does not see: the request bodies'
    schemas (routes read bodies by hand), and no 422, which this API never answers."""
    generate = app.openapi
    bodies = body_schemas(BODY_MODELS)

    def openapi() -> dict[str, Any]:
        # FastAPI caches the document (newer versions remake it when routes change), so
        # completing it must be harmless to repeat.
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas.update(bodies)
        for operations in document["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        return document

    return openapi


class ApiServer:
    """The API served on ``host:port`` (port 0 picks a free one); ``start`` binds the
    port and serves. Routers included in ``app`` before ``start`` are served too."""

    def __init__(self, context: ApiContext, *, host: str, port: int) -> None:
        self.app = build_app(context)
        self._wanted = (host, port)
        self._address: tuple[str, int] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), once started."""
        if self._address is None:
            raise RuntimeError("the API server has not started")
        return self._address

    def start(self) -> None:
        """Bind the port and serve in a background thread; returns once serving.

        uvicorn runs off the main thread, where it installs no signal handlers (Python
        allows them only on the main thread): the daemon keeps SIGTERM and SIGINT.
        """
        host, port = self._wanted
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
        bound = sock.getsockname()
        self._address = (str(bound[0]), int(bound[1]))
        _route_uvicorn_logs()
        config = uvicorn.Config(self.app, http="h11", log_config=None, access_log=False,
                                server_header=False, headers=[("server", "factsync")],
                                timeout_graceful_shutdown=STOP_GRACE_SECONDS)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api",
                                  daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError("the API server did not start; see the log")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        log.info("API listening on http://%s:%d", *self.address)

    def stop(self) -> None:
        """Stop serving and close the socket, if it was started."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=STOP_GRACE_SECONDS + 5)
        if self._thread.is_alive():
            log.warning("the API server did not stop within %ds", STOP_GRACE_SECONDS + 5)


class _UvicornLines(logging.Handler):
    """uvicorn's own lines, logged again on this module's logger: its errors as errors,
    the rest (starting, stopping, malformed requests) at DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelno if record.levelno >= logging.ERROR else logging.DEBUG
        log.log(level, "uvicorn: %s", record.getMessage(), exc_info=record.exc_info)


def _route_uvicorn_logs() -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.handlers = [_UvicornLines()]
    uvicorn_log.propagate = False
