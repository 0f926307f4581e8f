"""The conventions every API route follows: errors, JSON bodies and how both are documented.

Bodies are read by hand, whatever their ``Content-Type`` (``urllib`` sends
``application/x-www-form-urlencoded`` by default): the size comes from
``Content-Length`` and is refused before a byte is read, and the JSON is checked for
what ``json.loads`` lets through (NaN, deep nesting, lone surrogates) before a model
validates it. The OpenAPI document describes each body with the schema of that same
model (``body_doc``) and each error with the ``Error`` schema (``error_answers``).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import ClientDisconnect

from factsync.daemon.api_models import ApiBody, Error

MAX_BODY_DEPTH = 32
"""Deepest nesting of a JSON body; fact rows need 3, and deeper input only costs stack."""
SCHEMA_REF = "#/components/schemas/{model}"

Body = TypeVar("Body", bound=ApiBody)


class ApiError(Exception):
    """An error answered to the client with ``status`` and ``message``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_json(request: Request, *, max_bytes: int) -> Any:
    """The request's body as checked JSON (``None`` when empty).

    Raises:
        ApiError: 411 without ``Content-Length``, 413 over ``max_bytes`` (before reading
            it), 400 for anything but JSON text of at most ``MAX_BODY_DEPTH`` levels.
    """
    length = request.headers.get("content-length")
    if length is None:
        raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
    size = int(length)  # h11 has already refused a Content-Length that is not digits
    if size > max_bytes:
        raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"body of {size} bytes is over the {max_bytes} limit")
    try:
        raw = await request.body()
    except ClientDisconnect as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, "the client left before sending the body") from exc
    try:
        body = json.loads(raw or b"null", parse_constant=_no_constant)
    except RecursionError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       f"body is nested more than {MAX_BODY_DEPTH} levels deep") from exc
    except ValueError as exc:  # also bad UTF-8, NaN, and integers of over 4300 digits
        raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from exc
    check_body(body)
    return body


def parse_body(model: type[Body], body: Any) -> Body:
    """``body`` validated as ``model``; an ``ApiError`` 400 with the model's message if not."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, model.explain(exc.errors())) from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_body(body: Any) -> None:
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


_STORE_BUSY = "the state store cannot read or write right now (disk full, read-only, locked)"


def error_answers(specific: dict[int, str] | None = None, *, body: bool = False,
                  mutating: bool = False, store: bool = True) -> dict[int | str, Any]:
    """The error statuses of one operation, for its ``responses``, each with ``Error``.

    Args:
        specific: status -> description of the errors only this operation answers.
        body: it reads a JSON body, so it may also answer 400, 411 and 413.
        mutating: it needs the bearer token, so it may answer 401.
        store: it uses the state store, so it may answer 503.
    """
    described = {
        **({HTTPStatus.BAD_REQUEST: "the body is not valid JSON or not of the documented shape",
            HTTPStatus.LENGTH_REQUIRED: "no Content-Length header",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "the body is over the configured "
                                                 "api.max_body_bytes"} if body else {}),
        **({HTTPStatus.UNAUTHORIZED: "missing or wrong bearer token"} if mutating else {}),
        **({HTTPStatus.SERVICE_UNAVAILABLE: _STORE_BUSY} if store else {}),
        **(specific or {}),
    }
    return {int(status): {"model": Error, "description": description}
            for status, description in sorted(described.items())}


def body_doc(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """The ``openapi_extra`` of an operation whose JSON body ``model`` describes.

    The schema is a reference to ``model`` among the document's components, which
    ``body_schemas`` supplies.
    """
    schema = {"$ref": SCHEMA_REF.format(model=model.__name__)}
    return {"requestBody": {"required": required,
                            "content": {"application/json": {"schema": schema}}}}


def body_schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    """The component schemas of ``models`` and of the models they use, by name."""
    _, schemas = models_json_schema([(model, "validation") for model in models],
                                    ref_template=SCHEMA_REF)
    return schemas.get("$defs", {})
