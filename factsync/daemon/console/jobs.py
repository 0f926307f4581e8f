"""What the jobs pages show: jobs by state, and one job's stage timeline, gate verdicts
and the outcome of each of its facts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factsync.daemon.console.reports import edit_summary, fact_scores, gate_rows, kpi_rows
from factsync.store.records import JOB_ACTIVE, JOB_OUTCOMES, JOB_ROLLED_BACK
from factsync.store.store import StateStore

JOB_STATES = (*JOB_ACTIVE, *JOB_OUTCOMES, JOB_ROLLED_BACK)
"""Every state a job can be in, in the order the state machine goes through them."""


@dataclass(frozen=True)
class Stage:
    """One transition of a job and how long after the previous one it came."""

    state: str
    reason: str
    at: float
    after: float | None


@dataclass(frozen=True)
class FactOutcome:
    """A fact of the job: its change, what became of it, and its scores if measured."""

    change_id: int
    subject: str
    relation: str
    object: str
    old_object: str | None
    state: str
    reason: str
    now_in_job: int | None
    scores: dict[str, Any] | None

    @property
    def took(self) -> bool | None:
        """Whether the edit took (the greedy answer is the new object); ``None`` unscored."""
        value = (self.scores or {}).get("efficacy_accuracy")
        return None if value is None else bool(value)

    @property
    def probability(self) -> float | None:
        """The candidate's probability of the new object on the edit prompt."""
        return (self.scores or {}).get("probability")


def jobs_view(store: StateStore, *, state: str | None, limit: int) -> dict[str, Any]:
    """Values of the jobs page: the latest ``limit`` jobs, of ``state`` if given."""
    jobs = store.jobs(state=state or None, limit=limit)
    return {
        "jobs": [{"job": job, "gates": gate_rows(job.report)} for job in jobs],
        "states": JOB_STATES,
        "state": state or "",
        "limit": limit,
    }


def job_view(store: StateStore, job_id: int) -> dict[str, Any]:
    """Values of one job's page.

    Raises:
        KeyError: no such job.
    """
    job = store.job(job_id=job_id)
    events = store.job_events(job_id=job_id)
    stages = [Stage(e.state, e.reason, e.at, None if i == 0 else e.at - events[i - 1].at)
              for i, e in enumerate(events)]
    scores = fact_scores(job.report)
    changes = {c.id: c for c in store.changes(job_id=job_id)}
    # A rejection may retry some facts in a new job, which takes their changes along;
    # the report still scores them here.
    for change_id in scores.keys() - changes.keys():
        try:
            changes[change_id] = store.change(change_id=change_id)
        except KeyError:
            continue
    outcomes = [
        FactOutcome(change_id=c.id, subject=c.subject, relation=c.relation, object=c.object,
                    old_object=c.old_object, state=c.state, reason=c.reason,
                    now_in_job=c.job_id if c.job_id != job_id else None,
                    scores=scores.get(c.id))
        for c in sorted(changes.values(), key=lambda c: c.id)
    ]
    return {
        "job": job,
        "stages": stages,
        "gates": gate_rows(job.report),
        "kpis": kpi_rows(job.report),
        "edit": edit_summary(job.report),
        "facts": outcomes,
    }
