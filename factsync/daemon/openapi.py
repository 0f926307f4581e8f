"""The OpenAPI 3.0 description of the HTTP API, served at ``GET /openapi.json``.

Written by hand, next to the handlers in ``factsync.daemon.api``, in the words of this
project. It is the single list of what the API offers: ``tests/daemon/test_api.py``
checks that its paths and methods are exactly the routes table, and
``tests/reliability/test_api_fuzz.py`` fuzzes a live daemon from it (no 5xx, every
response as described here).
"""

from __future__ import annotations

from typing import Any

from factsync import __version__
from factsync.facts.records import MAX_FIELD_CHARS
from factsync.store.records import (
    CHANGE_ALREADY_TRUE,
    CHANGE_APPLIED,
    CHANGE_FAILED,
    CHANGE_PENDING,
    CHANGE_QUEUED,
    CHANGE_RECORDED,
    CHANGE_ROLLED_BACK,
    CHANGE_SUPERSEDED,
)

Schema = dict[str, Any]

OPENAPI_VERSION = "3.0.3"

_CHANGE_STATES = [CHANGE_PENDING, CHANGE_QUEUED, CHANGE_APPLIED, CHANGE_ALREADY_TRUE,
                  CHANGE_FAILED, CHANGE_SUPERSEDED, CHANGE_RECORDED, CHANGE_ROLLED_BACK]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None, *,
         closed: bool = True) -> Schema:
    """An object schema; ``closed`` objects have no properties beyond those named."""
    schema: Schema = {"type": "object", "properties": {**required, **(optional or {})}}
    if required:  # OpenAPI 3.0 does not allow an empty list
        schema["required"] = sorted(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _list(items: Schema) -> Schema:
    return {"type": "array", "items": items}


_STR: Schema = {"type": "string"}
_NUM: Schema = {"type": "number"}
_INT: Schema = {"type": "integer"}
_BOOL: Schema = {"type": "boolean"}
_ANY_OBJECT: Schema = {"type": "object"}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _schemas() -> dict[str, Schema]:
    text = {"type": "string", "maxLength": MAX_FIELD_CHARS}
    feed_value = {"anyOf": [_STR, _NUM], "nullable": True}
    version_fields = {
        "id": _STR, "seq": _INT, "parent_id": _nullable(_STR), "job_id": _nullable(_INT),
        "created_at": _NUM, "policy_digest": _nullable(_STR),
        "facts": _list(_ANY_OBJECT), "report": _ANY_OBJECT,
        "status": {"type": "string", "enum": ["ok", "rolled_back"]},
        "live": _BOOL,
        "fold": _nullable(_ANY_OBJECT),
    }
    change_fields = {
        "id": _INT, "subject": _STR, "relation": _STR, "object": _STR, "deleted": _BOOL,
        "source": _STR, "received_at": _NUM,
        "state": {"type": "string", "enum": _CHANGE_STATES}, "reason": _STR,
        "job_id": _nullable(_INT), "old_object": _nullable(_STR), "changed_at": _NUM,
    }
    job_fields = {
        "id": _INT, "state": _STR, "created_at": _NUM, "updated_at": _NUM,
        "policy_digest": _STR, "attempt": _INT, "version_id": _nullable(_STR),
        "report": _nullable(_ANY_OBJECT),
    }
    return {
        "Error": _obj({"error": _STR}),
        "FactRow": {
            **_obj({"subject": text, "relation": text},
                   {"object": text, "id": feed_value, "updated_at": feed_value,
                    "deleted": {"anyOf": [_BOOL, {"type": "string",
                                                   "enum": ["true", "false", ""]}]}}),
            "description": "One fact as a feed states it. `relation` is a catalog id or "
                           "alias; `object` may be left out only when `deleted` is true.",
        },
        "FactView": _obj({
            "subject": _STR, "relation": _STR, "object": _STR, "deleted": _BOOL,
            "source": _STR, "location": _STR, "record_id": _nullable(_STR),
            "updated_at": _nullable(_STR), "received_at": _NUM,
            "reverted_from": _nullable(_STR),
            "state": {"type": "string", "enum": [*_CHANGE_STATES, "unknown"]},
            "reason": _STR, "applied_object": _nullable(_STR), "applied_by": _nullable(_STR),
        }),
        "FactChange": _obj(change_fields),
        "FactKey": _obj({"subject": _STR, "relation": _STR}, closed=False),
        "PushResult": _obj({
            "batch": _STR, "accepted": _INT, "changed": _INT,
            "quarantined": _list(_obj({"index": _INT, "reason": _STR})),
        }),
        "Job": _obj(job_fields),
        "JobDetail": _obj({
            **job_fields,
            "events": _list(_obj({"id": _INT, "job_id": _INT, "state": _STR,
                                  "reason": _STR, "at": _NUM})),
            "changes": _list(_ref("FactChange")),
        }),
        "Version": _obj(version_fields),
        "QuarantineEntry": _obj({
            "id": _INT, "source": _STR, "location": _STR, "reason": _STR, "raw": _STR,
            "first_seen": _NUM, "last_seen": _NUM,
        }),
        "Status": _obj({
            "ready": _BOOL, "starting": _STR,
            "live_version": _obj({"id": _STR, "seq": _INT}),
            "live_history": _list(_obj({"version_id": _STR, "at": _NUM, "reason": _STR})),
            "alerts": _list(_obj({"name": _STR, "key": _STR, "summary": _STR})),
            "pending_changes": _INT,
            "jobs": {"type": "object", "additionalProperties": _INT,
                     "description": "job state -> how many jobs are in it"},
            "running_job": _nullable(_INT), "quarantined": _INT,
            "policy": _obj({"name": _STR, "digest": _STR}),
            "connectors": _list(_obj({"name": _STR, "up": _BOOL,
                                      "last_success": _nullable(_NUM),
                                      "last_error": _nullable(_STR)})),
            "pid": _INT,
        }),
    }


def _json(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json(description, _ref("Error"))


_STORE_BUSY = "the state store cannot read or write right now (disk full, read-only, locked)"
_NOT_FOUND = "nothing has that id"


def _operation(summary: str, responses: dict[str, Schema], *, store: bool = True,
               mutating: bool = False, parameters: list[Schema] | None = None,
               body: Schema | None = None, body_required: bool = True) -> Schema:
    """One operation; every POST may also answer 400, 411 and 413, every store user 503."""
    operation: Schema = {"summary": summary, "responses": dict(responses)}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": body_required,
                                    "content": {"application/json": {"schema": body}}}
        operation["responses"].setdefault("400", _error("the body is not valid JSON or "
                                                        "not of the documented shape"))
        operation["responses"]["411"] = _error("no Content-Length header")
        operation["responses"]["413"] = _error("the body is over the configured "
                                               "api.max_body_bytes")
    if mutating:
        operation["security"] = [{"bearer": []}]
        operation["responses"]["401"] = _error("missing or wrong bearer token")
    if store:
        operation["responses"].setdefault("503", _error(_STORE_BUSY))
    return {key: operation[key] for key in sorted(operation)}


def _query(name: str, description: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def _path(name: str, description: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema}


def api_document(*, max_list_limit: int, max_id: int, max_generated_tokens: int,
                 max_prompt_chars: int) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the API, as a JSON-ready mapping.

    Args:
        max_list_limit: the largest ``limit`` a listing accepts.
        max_id: the largest job id (what SQLite can store).
        max_generated_tokens: the largest ``max_new_tokens`` of ``POST /generate``.
        max_prompt_chars: the longest ``prompt`` of ``POST /generate``, in characters.
    """
    limit = _query("limit", "how many entries to list, newest first",
                   {"type": "integer", "minimum": 1, "maximum": max_list_limit,
                    "default": 100})
    listing_error = {"400": _error("limit is not an integer in range")}
    fact_key_body = _ref("FactKey")
    action_errors = {"400": _error("expected {\"subject\": str, \"relation\": str}")}
    paths = {
        "/healthz": {"get": _operation(
            "The process is up (no store or model needed).",
            {"200": _json("up", _obj({"status": {"type": "string", "enum": ["ok"]}}))},
            store=False)},
        "/readyz": {"get": _operation(
            "The model is loaded and the worker runs.",
            {"200": _json("ready", _obj({"ready": _BOOL, "reason": _STR})),
             "503": _json("still starting, or start-up failed (see reason), or the state "
                          "store cannot be read", {"oneOf": [_obj({"ready": _BOOL,
                                                                    "reason": _STR}),
                                                              _ref("Error")]})})},
        "/status": {"get": _operation(
            "What factsync status shows: live version, jobs, alerts, connectors.",
            {"200": _json("the daemon's status", _ref("Status"))})},
        "/facts": {
            "get": _operation(
                "Desired facts with the state of their latest change and what is applied.",
                {"200": _json("the facts, by subject and relation", _list(_ref("FactView")))},
                parameters=[_query("subject", "only facts about this subject", _STR),
                            _query("relation", "only facts of this relation id", _STR),
                            _query("state", "only facts whose latest change is in this "
                                   "state", _STR)]),
            "post": _operation(
                "Push fact rows; each row is judged on its own and bad rows are "
                "quarantined and reported, not refused.",
                {"202": _json("recorded; the worker edits the changed facts",
                              _ref("PushResult")),
                 "400": _error("expected a JSON list of fact rows, or {\"facts\": [...]}")},
                mutating=True,
                body={"oneOf": [_list(_ref("FactRow")),
                                _obj({"facts": _list(_ref("FactRow"))}, closed=False)]}),
        },
        "/facts/retry": {"post": _operation(
            "Queue the desired state of a fact again (an operator's retry of a failure).",
            {"202": _json("queued", _ref("FactChange")), **action_errors,
             "404": _error("no desired fact with that subject and relation")},
            mutating=True, body=fact_key_body)},
        "/facts/revert": {"post": _operation(
            "Queue an edit of an applied fact back to the object it replaced.",
            {"202": _json("queued", _ref("FactChange")), **action_errors,
             "404": _error("the fact was never applied by an edit")},
            mutating=True, body=fact_key_body)},
        "/jobs": {"get": _operation(
            "Jobs, newest first.",
            {"200": _json("the jobs", _list(_ref("Job"))), **listing_error},
            parameters=[_query("state", "only jobs in this state", _STR), limit])},
        "/jobs/{job_id}": {"get": _operation(
            "One job with its state transitions and fact changes.",
            {"200": _json("the job", _ref("JobDetail")),
             "400": _error(f"the job id is not an integer in 1..{max_id}"),
             "404": _error(_NOT_FOUND)},
            parameters=[_path("job_id", "the job's id", {"type": "integer", "format": "int64",
                                                         "minimum": 1, "maximum": max_id})])},
        "/versions": {"get": _operation(
            "Every model version, newest first; `live` marks the served one.",
            {"200": _json("the versions", _list(_ref("Version")))})},
        "/versions/{version_id}": {"get": _operation(
            "One model version with its facts and KPI report.",
            {"200": _json("the version", _ref("Version")), "404": _error(_NOT_FOUND)},
            parameters=[_path("version_id", "the version's id, e.g. base", _STR)])},
        "/quarantine": {"get": _operation(
            "Input that could not be used, most recent first, with where it came from.",
            {"200": _json("the entries", _list(_ref("QuarantineEntry"))), **listing_error},
            parameters=[limit])},
        "/weights": {"get": _operation(
            "The live version and a SHA-256 of the served editable weights.",
            {"200": _json("the digest", _obj({"version": _STR, "sha256": _STR})),
             "503": _error("the model is still loading, or the state store cannot be "
                           "read")})},
        "/rollback": {"post": _operation(
            "Make an earlier version live again (by default the live version's parent).",
            {"200": _json("rolled back", _obj({
                "queued": {"type": "boolean", "enum": [False]}, "to": _STR,
                "rolled_back": _list(_STR)})),
             "202": _json("still running on the worker after the wait; it goes on",
                          _obj({"queued": {"type": "boolean", "enum": [True]},
                                "to": _STR})),
             "400": _error("expected {} or {\"to\": \"<version id>\"}"),
             "409": _error("nothing to roll back to: the base is live, the version is "
                           "already live, or it is not an ancestor"),
             "503": _error("the daemon is still starting, or the state store cannot "
                           "write")},
            mutating=True, body_required=False,
            body=_obj({}, {"to": _nullable(_STR)}, closed=False))},
        "/generate": {"post": _operation(
            "Greedy completion of a prompt by the live version (a spot check).",
            {"200": _json("the completion, without the prompt", _obj({"text": _STR})),
             "400": _error(f"expected {{\"prompt\": str, \"max_new_tokens\": int}}, a "
                           f"non-blank prompt of at most {max_prompt_chars} characters and "
                           f"max_new_tokens in 1..{max_generated_tokens}"),
             "503": _error("the model is still loading")},
            store=False,
            body=_obj({"prompt": {"type": "string", "minLength": 1,
                                  "maxLength": max_prompt_chars, "pattern": r"\S"}},
                      {"max_new_tokens": {"type": "integer", "minimum": 1,
                                          "maximum": max_generated_tokens, "default": 16}},
                      closed=False))},
        "/openapi.json": {"get": _operation(
            "This document.", {"200": _json("the OpenAPI document", _ANY_OBJECT)},
            store=False)},
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "factsync",
            "version": __version__,
            "description": "Keeps a language model's facts current. Every response is "
                           "JSON; errors are {\"error\": \"...\"}. Mutating endpoints need "
                           "`Authorization: Bearer <token>` once api.token is configured.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "api.token (or "
                                                          "FACTSYNC_API_TOKEN)"}},
        },
    }
