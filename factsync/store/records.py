"""Typed rows of the state store."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

JOB_QUEUED = "queued"
JOB_PREPARING = "preparing"
JOB_EDITING = "editing"
JOB_EVALUATING = "evaluating"
JOB_PROMOTED = "promoted"
JOB_REJECTED = "rejected"
JOB_FAILED = "failed"
JOB_ROLLED_BACK = "rolled_back"
JOB_ACTIVE = (JOB_QUEUED, JOB_PREPARING, JOB_EDITING, JOB_EVALUATING)
JOB_OUTCOMES = (JOB_PROMOTED, JOB_REJECTED, JOB_FAILED)

CHANGE_PENDING = "pending"  # waiting for the reconciler
CHANGE_QUEUED = "queued"  # in a job
CHANGE_APPLIED = "applied"  # the live version states it
CHANGE_ALREADY_TRUE = "already_true"  # the live model already stated it; no edit needed
CHANGE_FAILED = "failed"  # an edit was tried and did not pass; kept with its reason
CHANGE_SUPERSEDED = "superseded"  # a later change to the same fact replaced it
CHANGE_RECORDED = "recorded"  # a deletion, recorded without an edit
CHANGE_ROLLED_BACK = "rolled_back"  # its version was rolled back; quarantined for an operator
CHANGE_STATES = (CHANGE_PENDING, CHANGE_QUEUED, CHANGE_APPLIED, CHANGE_ALREADY_TRUE,
                 CHANGE_FAILED, CHANGE_SUPERSEDED, CHANGE_RECORDED, CHANGE_ROLLED_BACK)
"""Every state a fact change can be in."""

VERSION_OK = "ok"
VERSION_ROLLED_BACK = "rolled_back"


class StoreError(RuntimeError):
    """The store cannot do what was asked (newer schema, a history that does not fit)."""


@dataclass(frozen=True)
class Row:
    """Base of the store's records: a plain-JSON view."""

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping."""
        return asdict(self)


@dataclass(frozen=True)
class DesiredFact(Row):
    """The latest state of one fact in the feed."""

    subject: str
    relation: str
    object: str
    deleted: bool
    source: str
    location: str
    record_id: str | None
    updated_at: str | None
    received_at: float
    reverted_from: str | None = None


@dataclass(frozen=True)
class FactChange(Row):
    """A change of a desired fact and what became of it."""

    id: int
    subject: str
    relation: str
    object: str
    deleted: bool
    source: str
    received_at: float
    state: str
    reason: str
    job_id: int | None
    old_object: str | None
    changed_at: float


@dataclass(frozen=True)
class AppliedFact(Row):
    """A fact the live version states, and the version that made it so."""

    subject: str
    relation: str
    object: str
    version_id: str
    change_id: int | None
    applied_at: float


@dataclass(frozen=True)
class KnownFact(Row):
    """A fact the store holds: its applied object, else its desired (not deleted) one."""

    subject: str
    relation: str
    object: str


@dataclass(frozen=True)
class Job(Row):
    """A batch of fact changes on its way to a version."""

    id: int
    state: str
    created_at: float
    updated_at: float
    policy_digest: str
    attempt: int
    version_id: str | None
    report: dict | None


@dataclass(frozen=True)
class JobEvent(Row):
    """One state transition of a job, with its reason."""

    id: int
    job_id: int
    state: str
    reason: str
    at: float


@dataclass(frozen=True)
class Rollback:
    """What a rollback undid.

    Attributes:
        rolled_back: the versions it undid, newest first.
        quarantined: facts of theirs newly quarantined for an operator.
    """

    rolled_back: list[str]
    quarantined: int


@dataclass(frozen=True)
class Version(Row):
    """An immutable model version: its parent, the facts it applied and its KPI report."""

    id: str
    seq: int
    parent_id: str | None
    job_id: int | None
    created_at: float
    policy_digest: str | None
    facts: list
    report: dict
    status: str


@dataclass(frozen=True)
class QuarantineEntry(Row):
    """Input that could not be used, where it came from and why."""

    id: int
    source: str
    location: str
    reason: str
    raw: str
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class MonitorCheck(Row):
    """One scheduled check of the live version: its KPIs and the rules they broke."""

    id: int
    version_id: str
    at: float
    metrics: dict
    failing: list


@dataclass(frozen=True)
class Fold(Row):
    """A version folded into a serving base: its whole weights, written as a checkpoint.

    Attributes:
        version_id: the folded version.
        at: when.
        checkpoint: the checkpoint's directory.
        reason: why the fold was made.
    """

    version_id: str
    at: float
    checkpoint: str
    reason: str


def decode_json_fields(values: dict[str, Any], *names: str) -> dict[str, Any]:
    """``values`` with the named TEXT columns parsed from JSON."""
    for name in names:
        if values.get(name) is not None:
            values[name] = json.loads(values[name])
    return values


def where_fields(**fields: Any) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause over the fields that are not ``None``."""
    used = {name: value for name, value in fields.items() if value is not None}
    if not used:
        return "", ()
    return "WHERE " + " AND ".join(f"{name} = ?" for name in used), tuple(used.values())


def change_from_row(row: dict[str, Any]) -> FactChange:
    """A ``FactChange`` from its table row."""
    return FactChange(**{**row, "deleted": bool(row["deleted"])})
