"""The routes of the HTTP API: health, status, facts, jobs, versions, quarantine, pushes,
rollback and generation.

Handlers are plain functions (FastAPI runs them in its thread pool, since the store and
the model block); what they read and act on is the ``ApiContext`` that ``build_app``
puts on the application. Each declares its answers (models and error statuses), from
which FastAPI writes the OpenAPI document.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator
from pydantic_core import PydanticCustomError

from factsync.daemon import api_models as m
from factsync.daemon.api_protocol import (
    ApiError,
    body_doc,
    error_answers,
    parse_body,
    read_json,
)
from factsync.daemon.ingest import Ingest
from factsync.jobs.model_state import ModelState
from factsync.store.records import StoreError
from factsync.store.store import StateStore

MAX_LIST_LIMIT = 1000
"""Largest ``limit`` of a listing, so that one response stays a few megabytes."""
LIST_LIMIT = 100
"""``limit`` of a listing when none is given."""
MAX_ID = 2**63 - 1
"""Largest id SQLite stores (a signed 64-bit integer)."""
BODY_MODELS: list[type[BaseModel]] = [m.FactPush, m.FactKey, m.RollbackRequest,
                                      m.GenerateRequest]
"""The models of the request bodies, whose schemas the OpenAPI document holds."""


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


async def api_context(request: Request) -> ApiContext:
    """The ``ApiContext`` of the application serving ``request`` (a dependency)."""
    return request.app.state.context


Context = Annotated[ApiContext, Depends(api_context)]
_BEARER = HTTPBearer(scheme_name="bearer", auto_error=False,
                     description="api.token (or FACTSYNC_API_TOKEN)")


async def _authorise(
    request: Request, context: Context,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
) -> None:
    """Refuse a request without the configured token (there is none to check if unset).

    ``Security`` declares the scheme for the OpenAPI document; the whole header is
    compared here, in constant time, exactly as it always was.
    """
    if context.token is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {context.token}".encode()):
        raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")


async def _body(request: Request, context: Context) -> Any:
    return await read_json(request, max_bytes=context.max_body_bytes)


JsonBody = Annotated[Any, Depends(_body)]
MUTATING = [Depends(_authorise)]


def _integer(label: str, high: int, *, blank: int | None = None) -> BeforeValidator:
    """Parse a query or path integer as ``int()`` does, into ``1..high``, with errors
    that name it ``label``; a ``blank`` default stands for an empty value (``?limit=``)."""

    def parse(value: Any) -> int:
        if value == "" and blank is not None:
            return blank
        try:
            number = int(value)
        except ValueError:
            raise PydanticCustomError(
                "parameter", "{label} must be an integer, got {value}",
                {"label": label, "value": repr(value[:40])}) from None
        if not 1 <= number <= high:
            raise PydanticCustomError(
                "parameter", "{label} must be an integer in 1..{high}, got {value}",
                {"label": label, "high": high, "value": value[:40]})
        return number

    return BeforeValidator(parse)


Limit = Annotated[int, _integer("limit", MAX_LIST_LIMIT, blank=LIST_LIMIT),
                  Query(ge=1, le=MAX_LIST_LIMIT, description="how many entries to list, "
                                                             "newest first")]
_LIMIT_ERROR = {HTTPStatus.BAD_REQUEST: "limit is not an integer in range"}
_NOT_FOUND = "nothing has that id"

router = APIRouter()


@router.get("/healthz", response_model=m.Health, responses=error_answers(store=False))
def health() -> dict:
    """The process is up (no store or model needed)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=m.Readiness, responses={
    HTTPStatus.SERVICE_UNAVAILABLE: {
        "model": m.Readiness | m.Error,
        "description": "still starting, or start-up failed (see reason), or the state "
                       "store cannot be read"}})
def readiness(context: Context, response: Response) -> dict:
    """The model is loaded and the worker runs."""
    status = context.status()
    if not status["ready"]:
        response.status_code = HTTPStatus.SERVICE_UNAVAILABLE
    return {"ready": status["ready"], "reason": status.get("starting", "")}


@router.get("/status", response_model=m.Status, responses=error_answers())
def status(context: Context) -> dict:
    """What `factsync status` shows: live version, jobs, alerts, connectors."""
    return context.status()


@router.get("/facts", response_model=list[m.FactView], responses=error_answers())
def facts(
    context: Context,
    subject: Annotated[str | None, Query(description="only facts about this subject")] = None,
    relation: Annotated[str | None, Query(description="only facts of this relation id")] = None,
    state: Annotated[str | None, Query(description="only facts whose latest change is in "
                                                   "this state")] = None,
) -> list[dict]:
    """Desired facts with the state of their latest change and what is applied."""
    # A blank parameter filters nothing, as in a form left empty.
    return context.store.fact_views(subject=subject or None, relation=relation or None,
                                    state=state or None)


@router.post("/facts", status_code=HTTPStatus.ACCEPTED, response_model=m.PushResult,
             dependencies=MUTATING, openapi_extra=body_doc(m.FactPush),
             responses=error_answers({HTTPStatus.BAD_REQUEST: m.FactPush.invalid},
                                     body=True, mutating=True))
def push_facts(context: Context, body: JsonBody) -> dict:
    """Push fact rows; each row is judged on its own and bad rows are quarantined and
    reported, not refused."""
    rows = body.get("facts") if isinstance(body, dict) else body
    if not isinstance(rows, list):
        raise ApiError(HTTPStatus.BAD_REQUEST, m.FactPush.invalid)
    batch = f"push-{time.time_ns()}"
    result = context.ingest.push(rows, source="api", batch=batch)
    return {"batch": batch, **result.__dict__}


@router.post("/facts/retry", status_code=HTTPStatus.ACCEPTED, response_model=m.FactChange,
             dependencies=MUTATING, openapi_extra=body_doc(m.FactKey),
             responses=error_answers({HTTPStatus.BAD_REQUEST: m.FactKey.invalid,
                                      HTTPStatus.NOT_FOUND: "no desired fact with that "
                                                            "subject and relation"},
                                     body=True, mutating=True))
def retry_fact(context: Context, body: JsonBody) -> dict:
    """Queue the desired state of a fact again (an operator's retry of a failure)."""
    key = parse_body(m.FactKey, body)
    change = context.store.retry(subject=key.subject, relation=key.relation)
    if change is None:
        raise ApiError(HTTPStatus.NOT_FOUND, "no desired fact with that subject and relation")
    context.wake()
    return change.as_dict()


@router.post("/facts/revert", status_code=HTTPStatus.ACCEPTED, response_model=m.FactChange,
             dependencies=MUTATING, openapi_extra=body_doc(m.FactKey),
             responses=error_answers({HTTPStatus.BAD_REQUEST: m.FactKey.invalid,
                                      HTTPStatus.NOT_FOUND: "the fact was never applied by "
                                                            "an edit"},
                                     body=True, mutating=True))
def revert_fact(context: Context, body: JsonBody) -> dict:
    """Queue an edit of an applied fact back to the object it replaced."""
    key = parse_body(m.FactKey, body)
    try:
        change = context.store.revert(subject=key.subject, relation=key.relation)
    except KeyError as exc:
        raise ApiError(HTTPStatus.NOT_FOUND, str(exc).strip("\"")) from exc
    context.wake()
    return change.as_dict()


@router.get("/jobs", response_model=list[m.Job], responses=error_answers(_LIMIT_ERROR))
def jobs(
    context: Context, limit: Limit = LIST_LIMIT,
    state: Annotated[str | None, Query(description="only jobs in this state")] = None,
) -> list[dict]:
    """Jobs, newest first."""
    return [job.as_dict() for job in context.store.jobs(state=state or None, limit=limit)]


@router.get("/jobs/{job_id}", response_model=m.JobDetail, responses=error_answers({
    HTTPStatus.BAD_REQUEST: f"the job id is not an integer in 1..{MAX_ID}",
    HTTPStatus.NOT_FOUND: _NOT_FOUND}))
def job(
    context: Context,
    job_id: Annotated[int, _integer("job id", MAX_ID),
                      Path(ge=1, le=MAX_ID, description="the job's id")],
) -> dict:
    """One job with its state transitions and fact changes."""
    try:
        found = context.store.job(job_id=job_id)
    except KeyError as exc:
        raise ApiError(HTTPStatus.NOT_FOUND, f"no job {job_id}") from exc
    return {
        **found.as_dict(),
        "events": [e.as_dict() for e in context.store.job_events(job_id=job_id)],
        "changes": [c.as_dict() for c in context.store.changes(job_id=job_id)],
    }


@router.get("/versions", response_model=list[m.Version], responses=error_answers())
def versions(context: Context) -> list[dict]:
    """Every model version, newest first; `live` marks the served one."""
    return context.store.version_rows(context.store.versions())


# ":path" so that an id with an escaped slash (%2F) still reaches the lookup.
@router.get("/versions/{version_id:path}", response_model=m.Version,
            responses=error_answers({HTTPStatus.NOT_FOUND: _NOT_FOUND}))
def version(
    context: Context,
    version_id: Annotated[str, Path(description="the version's id, e.g. base")],
) -> dict:
    """One model version with its facts and KPI report."""
    try:
        found = context.store.version(version_id=version_id)
    except KeyError as exc:
        raise ApiError(HTTPStatus.NOT_FOUND, f"no version {version_id}") from exc
    return context.store.version_rows([found])[0]


@router.get("/quarantine", response_model=list[m.QuarantineEntry],
            responses=error_answers(_LIMIT_ERROR))
def quarantine(context: Context, limit: Limit = LIST_LIMIT) -> list[dict]:
    """Input that could not be used, most recent first, with where it came from."""
    return [entry.as_dict() for entry in context.store.quarantined(limit=limit)]


@router.get("/weights", response_model=m.WeightsDigest, responses=error_answers({
    HTTPStatus.SERVICE_UNAVAILABLE: "the model is still loading, or the state store "
                                    "cannot be read"}))
def weights(context: Context) -> dict:
    """The live version and a SHA-256 of the served editable weights."""
    models = context.models()
    if models is None:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the model is still loading")
    return {"version": context.store.live_version().id,
            "sha256": models.digest(serving=True)}


@router.post("/rollback", response_model=m.RolledBack, dependencies=MUTATING,
             openapi_extra=body_doc(m.RollbackRequest, required=False),
             responses={
                 HTTPStatus.ACCEPTED: {"model": m.RollbackQueued,
                                       "description": m.RollbackQueued.__doc__},
                 **error_answers({
                     HTTPStatus.BAD_REQUEST: m.RollbackRequest.invalid,
                     HTTPStatus.CONFLICT: "nothing to roll back to: the base is live, the "
                                          "version is already live, or it is not an "
                                          "ancestor",
                     HTTPStatus.SERVICE_UNAVAILABLE: "the daemon is still starting, or the "
                                                     "state store cannot write"},
                     body=True, mutating=True)})
def rollback(context: Context, body: JsonBody) -> Any:
    """Make an earlier version live again (by default the live version's parent)."""
    request = parse_body(m.RollbackRequest, {} if body is None else body)
    try:
        result = context.rollback(request.to)
    except (ValueError, KeyError, StoreError) as exc:
        raise ApiError(HTTPStatus.CONFLICT, str(exc).strip("'\"")) from exc
    except RuntimeError as exc:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from exc
    if result["queued"]:
        queued = m.RollbackQueued.model_validate(result)
        return JSONResponse(queued.model_dump(mode="json"), status_code=HTTPStatus.ACCEPTED)
    return result


@router.post("/generate", response_model=m.Generated,
             openapi_extra=body_doc(m.GenerateRequest),
             responses=error_answers({
                 HTTPStatus.BAD_REQUEST: f"{m.GenerateRequest.invalid}, a non-blank prompt "
                                         f"of at most {m.MAX_PROMPT_CHARS} characters and "
                                         f"max_new_tokens in 1..{m.MAX_GENERATED_TOKENS}",
                 HTTPStatus.SERVICE_UNAVAILABLE: "the model is still loading"},
                 body=True, store=False))
def generate(context: Context, body: JsonBody) -> dict:
    """Greedy completion of a prompt by the live version (a spot check)."""
    request = parse_body(m.GenerateRequest, body)
    models = context.models()
    if models is None:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the model is still loading")
    return {"text": models.generate(request.prompt, request.max_new_tokens)}
