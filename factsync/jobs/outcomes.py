"""What a job can end in, and what each kind of error means for its facts.

Errors carry their retry meaning, so one place (``JobRunner``) turns any exception into
a recorded outcome:

- ``permanent``: the facts themselves cannot be edited as asked; they fail and are
  alerted, and only a new word from the feed (or ``factsync retry``) queues them again.
- ``temporary``: the job could not finish now for a reason that passes (memory ran out,
  a device was busy, no executor worker could do its share); its facts go back to
  pending and the worker backs off.
- ``storage``: the disk or the state store failed under the job; as ``temporary``, and
  the operator is told the data directory is the cause.

Stopping the daemon is not an error: ``JobInterrupted`` leaves the job to be rerun
from the start after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from factsync.executors.local import ExecutorError
from factsync.kpis.report import GateResult, KpiReport
from factsync.store.faults import unwritable_reason
from factsync.store.records import Job, Version


class JobInterrupted(Exception):
    """The daemon is stopping; the job is left to resume after a restart."""


class RetryMeaning(str, Enum):
    """What a failed job's facts do next (see the module docstring)."""

    PERMANENT = "permanent"
    TEMPORARY = "temporary"
    STORAGE = "storage"

    @property
    def facts_wait(self) -> bool:
        """Whether the job's facts go back to pending rather than failing."""
        return self is not RetryMeaning.PERMANENT


def retry_meaning(exc: BaseException) -> RetryMeaning:
    """What ``exc`` means for the facts of the job it stopped."""
    if isinstance(exc, OSError) or unwritable_reason(exc) is not None:
        return RetryMeaning.STORAGE
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError, ExecutorError)):
        return RetryMeaning.TEMPORARY
    return RetryMeaning.PERMANENT


class OutcomeKind(str, Enum):
    """How a job ended; the value is the label of ``factsync_jobs_total``."""

    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True)
class FactOutcome:
    """One fact change of a finished job.

    Attributes:
        change_id: the change.
        subject, relation, object: the fact.
        state: the change's state after the job.
        reason: why, as the store records it.
    """

    change_id: int
    subject: str
    relation: str
    object: str
    state: str
    reason: str


@dataclass(frozen=True)
class JobOutcome:
    """How one job ended.

    Attributes:
        job: the job.
        kind: promoted, rejected or failed.
        summary: one sentence for logs and alerts.
        facts: what happened to each of the job's changes.
        version: the version made live (promoted only).
        report: the KPI report (promoted and rejected).
        blocking_gates: the failed blocking gates (rejected only).
        beyond_reach: those of them the live version fails as well, so that no edit
            passes them until they are relaxed or the live version is rolled back.
        retry_jobs: the jobs the job's facts were retried in (rejected only).
        meaning: what the error means for the facts (failed only).
    """

    job: Job
    kind: OutcomeKind
    summary: str
    facts: list[FactOutcome] = field(default_factory=list)
    version: Version | None = None
    report: KpiReport | None = None
    blocking_gates: list[GateResult] = field(default_factory=list)
    beyond_reach: list[GateResult] = field(default_factory=list)
    retry_jobs: list[Job] = field(default_factory=list)
    meaning: RetryMeaning | None = None
