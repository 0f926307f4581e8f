"""The HTTP API's request and response bodies, from which its OpenAPI document is made.

Request bodies are read and checked by hand (``factsync.daemon.api_http``), then
validated with these models in strict mode: JSON gives no types to coerce, and a
``"2"`` or ``true`` where a number belongs is the client's mistake. Keys a model does
not name are ignored, as they always were. Each body model knows the message it
answers with when validation fails.

Response models forbid keys they do not name, so a field the store adds and the API
would silently drop fails the tests (as a 500) instead.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from factsync.facts.records import MAX_FIELD_CHARS
from factsync.store.records import CHANGE_STATES, VERSION_OK, VERSION_ROLLED_BACK

MAX_GENERATED_TOKENS = 256
MAX_PROMPT_CHARS = 1000
"""Longest ``POST /generate`` prompt: a spot check needs a sentence or two, and the
serving model is locked while it generates."""

ChangeState = Literal[CHANGE_STATES]
FeedValue = str | float | None
FeedText = Annotated[str, Field(max_length=MAX_FIELD_CHARS)]


# request bodies


class ApiBody(BaseModel):
    """A JSON request body; ``invalid`` is the message for one of the wrong shape."""

    model_config = ConfigDict(strict=True, extra="ignore")
    invalid: ClassVar[str]

    @classmethod
    def explain(cls, errors: list[ErrorDetails]) -> str:
        """The message for a body that failed validation with ``errors``."""
        return cls.invalid


class FactRow(BaseModel):
    """One fact as a feed states it. `relation` is a catalog id or alias; `object` may be
    left out only when `deleted` is true."""

    model_config = ConfigDict(extra="forbid")
    subject: FeedText
    relation: FeedText
    object: FeedText | None = None
    id: FeedValue = None
    updated_at: FeedValue = None
    deleted: bool | Literal["true", "false", ""] = False


class FactsEnvelope(BaseModel):
    """Fact rows wrapped in an object."""

    facts: list[FactRow]


class FactPush(RootModel[list[FactRow] | FactsEnvelope]):
    """Fact rows, bare or wrapped. Only this outer shape is checked at once; each row is
    judged on its own, and bad rows are quarantined and reported."""

    invalid: ClassVar[str] = "expected a JSON list of fact rows, or {\"facts\": [...]}"


class FactKey(ApiBody):
    """Which fact: its subject and relation id."""

    invalid: ClassVar[str] = "expected {\"subject\": str, \"relation\": str}"
    subject: str
    relation: str


class RollbackRequest(ApiBody):
    """The version to make live; by default the live version's parent."""

    invalid: ClassVar[str] = "expected {} or {\"to\": \"<version id>\"}"
    to: str | None = None


class GenerateRequest(ApiBody):
    """A non-blank prompt and how many tokens to add to it."""

    invalid: ClassVar[str] = "expected {\"prompt\": str, \"max_new_tokens\": int}"
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(16, ge=1, le=MAX_GENERATED_TOKENS)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise PydanticCustomError("blank", "prompt is empty")
        return prompt

    @classmethod
    def explain(cls, errors: list[ErrorDetails]) -> str:
        """The first of: wrong shape, bad ``max_new_tokens``, blank or overlong prompt."""
        by_field = {error["loc"][0] if error["loc"] else "": error for error in errors}
        prompt = by_field.get("prompt")
        if "" in by_field or (prompt and prompt["type"] in ("missing", "string_type")):
            return cls.invalid
        if "max_new_tokens" in by_field:
            return f"max_new_tokens must be an integer in 1..{MAX_GENERATED_TOKENS}"
        if prompt is not None and prompt["type"] == "string_too_long":
            return (f"prompt is {len(prompt['input'])} characters, "
                    f"more than {MAX_PROMPT_CHARS}")
        return "prompt is empty"


# response bodies


class ApiAnswer(BaseModel):
    """A JSON response body; keys it does not name are an error, not dropped."""

    model_config = ConfigDict(extra="forbid")


class Error(ApiAnswer):
    """Every error the API answers."""

    error: str


class Health(ApiAnswer):
    """The process is up."""

    status: Literal["ok"]


class Readiness(ApiAnswer):
    """Whether the model is loaded and the worker runs; if not, why."""

    ready: bool
    reason: str


class LiveVersionRef(ApiAnswer):
    """The live version."""

    id: str
    seq: int


class LiveMove(ApiAnswer):
    """One move of the live pointer."""

    version_id: str
    at: float
    reason: str


class AlertView(ApiAnswer):
    """An active alert."""

    name: str
    key: str
    summary: str


class PolicyRef(ApiAnswer):
    """The policy in force."""

    name: str
    digest: str


class ConnectorHealth(ApiAnswer):
    """How one connector is doing."""

    name: str
    up: bool
    last_success: float | None
    last_error: str | None


class Status(ApiAnswer):
    """What `factsync status` shows: live version, jobs, alerts, connectors."""

    ready: bool
    starting: str
    live_version: LiveVersionRef
    live_history: list[LiveMove]
    alerts: list[AlertView]
    pending_changes: int
    jobs: dict[str, int] = Field(description="job state -> how many jobs are in it")
    running_job: int | None
    quarantined: int
    policy: PolicyRef
    connectors: list[ConnectorHealth]
    pid: int


class FactView(ApiAnswer):
    """A desired fact with the state of its latest change and what is applied."""

    subject: str
    relation: str
    object: str
    deleted: bool
    source: str
    location: str
    record_id: str | None
    updated_at: str | None
    received_at: float
    reverted_from: str | None
    state: ChangeState | Literal["unknown"]
    reason: str
    applied_object: str | None
    applied_by: str | None


class FactChange(ApiAnswer):
    """One change of a desired fact and where it got to."""

    id: int
    subject: str
    relation: str
    object: str
    deleted: bool
    source: str
    received_at: float
    state: ChangeState
    reason: str
    job_id: int | None
    old_object: str | None
    changed_at: float


class QuarantinedRow(ApiAnswer):
    """A pushed row that was quarantined, by its index in the push."""

    index: int
    reason: str


class PushResult(ApiAnswer):
    """What became of the rows of one push."""

    batch: str
    accepted: int
    changed: int
    quarantined: list[QuarantinedRow]


class Job(ApiAnswer):
    """An edit job."""

    id: int
    state: str
    created_at: float
    updated_at: float
    policy_digest: str
    attempt: int
    version_id: str | None
    report: dict[str, Any] | None


class JobEvent(ApiAnswer):
    """One state transition of a job."""

    id: int
    job_id: int
    state: str
    reason: str
    at: float


class JobDetail(Job):
    """A job with its state transitions and fact changes."""

    events: list[JobEvent]
    changes: list[FactChange]


class Fold(ApiAnswer):
    """A version folded into a merged checkpoint."""

    version_id: str
    at: float
    checkpoint: str
    reason: str


class Version(ApiAnswer):
    """A model version; `live` marks the served one."""

    id: str
    seq: int
    parent_id: str | None
    job_id: int | None
    created_at: float
    policy_digest: str | None
    facts: list[dict[str, Any]]
    report: dict[str, Any]
    status: Literal[VERSION_OK, VERSION_ROLLED_BACK]
    live: bool
    fold: Fold | None


class QuarantineEntry(ApiAnswer):
    """Input that could not be used, with where it came from."""

    id: int
    source: str
    location: str
    reason: str
    raw: str
    first_seen: float
    last_seen: float


class WeightsDigest(ApiAnswer):
    """The live version and a SHA-256 of the served editable weights."""

    version: str
    sha256: str


class RolledBack(ApiAnswer):
    """A rollback that finished."""

    queued: Literal[False]
    to: str
    rolled_back: list[str]


class RollbackQueued(ApiAnswer):
    """A rollback still running on the worker after the wait; it goes on."""

    queued: Literal[True]
    to: str


class Generated(ApiAnswer):
    """A completion, without the prompt."""

    text: str
