"""``JobRunner``: carries one queued job through its stages to a recorded outcome.

A job moves queued -> preparing -> editing -> evaluating -> promoted | rejected | failed,
each transition committed before the work it starts:

1. preparing: old objects, neighbours and probes from the live model and the store,
   and the live version's scores on them;
2. editing: the engine's IME/NME edit, which leaves the model unchanged;
3. evaluating: the candidate (live + delta) scored and judged by the policy's gates;
4. then ``LiveVersion.promote`` makes it live, or the job is rejected.

Any exception becomes a ``failed`` outcome with its retry meaning (see ``outcomes``);
a stop request is honoured between stages and leaves the job for a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from factsync.editing.cancellation import EditCancelled
from factsync.editing.delta import AppliedDelta
from factsync.editing.engine import EditEngine, EditResult
from factsync.editing.requests import EditRequest
from factsync.evaluation.kpis import EditCheck, Measurement, Prompted, kpi_report
from factsync.executors.local import Executor, LocalExecutor
from factsync.facts.catalog import RelationCatalog
from factsync.failpoints import failpoint
from factsync.jobs.canaries import CanaryFact
from factsync.jobs.live import LiveVersion, Promotion
from factsync.jobs.model_state import ModelState
from factsync.jobs.outcomes import (
    FactOutcome,
    JobInterrupted,
    JobOutcome,
    OutcomeKind,
    RetryMeaning,
    retry_meaning,
)
from factsync.jobs.preparation import PreparedFact, prepare_job, probes_of, retention_facts
from factsync.kpis.report import GateResult, KpiReport, Metric
from factsync.policies.judge import beyond_reach, judge
from factsync.policies.schema import OnFailure, Policy
from factsync.store.records import (
    CHANGE_FAILED,
    CHANGE_PENDING,
    CHANGE_QUEUED,
    JOB_EDITING,
    JOB_EVALUATING,
    JOB_FAILED,
    JOB_PREPARING,
    JOB_REJECTED,
    FactChange,
    Job,
)
from factsync.store.store import StateStore

log = logging.getLogger(__name__)

StageTimer = Callable[[str, float], object]
"""Told each finished stage's name and its seconds."""


class JobRunner:
    """Runs jobs on the worker's model; one at a time, on the thread that owns it.

    Args:
        store: the state store.
        catalog: known relations.
        policy: the promotion policy.
        models: the worker's and the served model.
        engine: the edit engine for ``models.work``.
        live: the owner of the live version, which promotes passing candidates.
        fluency_texts: held-out text for the perplexity KPI.
        base_perplexity: the base model's perplexity on ``fluency_texts``.
        stopping: whether the daemon asked to stop (checked between stages and between
            the edit's optimisation steps).
        on_stage: told how long each stage took.
        executor: where the KPI scoring runs (the engine's optimiser says where the edit
            runs); in this thread by default.
        canaries: facts that must never change, measured on the live version and the
            candidate for the canary KPI (those a job itself rewrites are left out), and
            stated again in a job that loses them when the policy repairs canaries.
    """

    def __init__(
        self, *, store: StateStore, catalog: RelationCatalog, policy: Policy,
        models: ModelState, engine: EditEngine, live: LiveVersion,
        fluency_texts: Sequence[str], base_perplexity: float,
        stopping: Callable[[], bool] = lambda: False,
        on_stage: StageTimer = lambda stage, seconds: None,
        executor: Executor | None = None,
        canaries: Sequence[CanaryFact] = (),
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._policy = policy
        self._models = models
        self._engine = engine
        self._live = live
        self._texts = list(fluency_texts)
        self._base_perplexity = base_perplexity
        self._stopping = stopping
        self._on_stage = on_stage
        self._executor = executor or LocalExecutor()
        self._canaries = list(canaries)

    def run(self, job: Job) -> JobOutcome:
        """Carry ``job`` to an outcome, recorded in the store before it returns.

        Raises ``JobInterrupted`` when the daemon is stopping; the job is then left in
        its current state to be rerun from the start after a restart.
        """
        changes = self._store.changes(job_id=job.id, state=CHANGE_QUEUED)
        if not changes:
            reason = "no queued fact changes"
            self._store.finish_job(job_id=job.id, state=JOB_FAILED, reason=reason,
                                   change_states={})
            return JobOutcome(job, OutcomeKind.FAILED, reason, meaning=RetryMeaning.PERMANENT)
        handle: AppliedDelta | None = None
        try:
            with self._stage(job, JOB_PREPARING, f"{len(changes)} fact(s)"):
                prepared = prepare_job(self._models.work, self._store, self._catalog,
                                       self._policy, changes)
                retention = probes_of(self._catalog, retention_facts(
                    self._store, self._catalog,
                    exclude={(c.subject, c.relation) for c in changes},
                    sample=self._policy.evaluation.retention_sample, seed=job.id,
                ))
                checks = [p.check for p in prepared]
                rewritten = {check.prompt for check in checks}
                canaries = [c for c in self._canaries if c.prompted[0] not in rewritten]
                job_probes = _Probes(checks, retention + [c.prompted for c in canaries],
                                     len(canaries))
                live = self._executor.measure(self._models.work, checks, job_probes.probes,
                                              self._texts)
            requests = [p.request for p in prepared]
            with self._stage(job, JOB_EDITING, _describe(prepared)):
                result = self._edit(requests)
            with self._stage(job, JOB_EVALUATING, f"IME ran {result.iterations} pass(es)"):
                handle, report, candidate = self._evaluate(result, job_probes, live)
            self._checkpoint()
            repaired = self._canaries_to_repair(report, canaries, live, candidate)
            if repaired:
                handle.revert()
                handle = None
                stated = "; ".join(" ".join(c.prompted) for c in repaired)
                with self._stage(job, JOB_EDITING, f"stating lost canaries again: {stated}"):
                    result = self._edit(requests + [c.restatement() for c in repaired])
                with self._stage(job, JOB_EVALUATING, f"IME ran {result.iterations} pass(es) "
                                 "with the lost canaries"):
                    handle, report, _ = self._evaluate(result, job_probes, live)
                self._checkpoint()
            if any(g.blocking for g in report.gates):
                handle.revert()
                handle = None
                return self._reject(job, prepared, report)
            version = self._live.promote(Promotion(
                job=job, result=result, facts=_version_facts(prepared),
                applied={p.change.id: p.request.old_object or "" for p in prepared},
                report=report.to_dict(), policy_digest=self._policy.digest,
            ))
            handle = None
        except JobInterrupted:
            if handle is not None:
                handle.revert()
            raise
        except Exception as exc:
            if handle is not None:
                handle.revert()
            return self._fail(job, changes, exc)
        summary = (f"job {job.id} promoted: version {version.id} (seq {version.seq}) is live "
                   f"with {len(prepared)} fact(s)")
        if repaired:
            summary += f", stating again the canaries it lost: {stated}"
        return JobOutcome(job, OutcomeKind.PROMOTED, summary, version=version, report=report,
                          facts=[_fact(p.change, "applied", f"applied by version {version.id}")
                                 for p in prepared])

    def _edit(self, requests: list[EditRequest]) -> EditResult:
        """The engine's edit of ``requests``; ``JobInterrupted`` when the daemon stops."""
        try:
            return self._engine.edit(requests, cancelled=self._stopping)
        except EditCancelled:
            raise JobInterrupted from None

    def _evaluate(self, result: EditResult, probes: _Probes,
                  live: Measurement) -> tuple[AppliedDelta, KpiReport, Measurement]:
        """Apply ``result``'s delta and judge the candidate against ``live``: the applied
        delta, the judged report and the candidate's measurement."""
        handle = result.delta.apply(self._models.work)
        try:
            candidate = self._executor.measure(self._models.work, probes.checks,
                                               probes.probes, self._texts,
                                               applied=result.delta)
        except BaseException:
            handle.revert()
            raise
        measured = kpi_report(probes.checks, live, candidate,
                              base_perplexity=self._base_perplexity, canaries=probes.canaries)
        report = replace(measured, ime_iterations=result.iterations,
                         edit_seconds=result.seconds, gates=tuple(judge(self._policy, measured)))
        return handle, report, candidate

    def _canaries_to_repair(self, report: KpiReport, canaries: list[CanaryFact],
                            live: Measurement, candidate: Measurement) -> list[CanaryFact]:
        """The canaries the candidate lost, when the policy repairs canaries, every edit
        took and only canary gates block; else none."""
        blocking = [g for g in report.gates if g.blocking]
        if (not self._policy.repair_canaries or not blocking
                or any(g.metric is not Metric.CANARY for g in blocking)
                or not all(f.took for f in report.facts)):
            return []
        tail = slice(len(live.retained) - len(canaries), None)
        return [canary for canary, before, after
                in zip(canaries, live.retained[tail], candidate.retained[tail], strict=True)
                if before and not after]

    def _fail(self, job: Job, changes: Sequence[FactChange], exc: Exception) -> JobOutcome:
        meaning = retry_meaning(exc)
        log.error("job %d failed (%s): %s: %s", job.id, meaning.value, type(exc).__name__,
                  exc, extra={"job_id": job.id}, exc_info=meaning is RetryMeaning.PERMANENT)
        reason = f"job {job.id} failed: {type(exc).__name__}: {exc}"
        state = CHANGE_PENDING if meaning.facts_wait else CHANGE_FAILED
        if meaning.facts_wait:
            reason += "; its facts wait as pending"
        self._store.finish_job(job_id=job.id, state=JOB_FAILED, reason=reason,
                               change_states={c.id: (state, reason) for c in changes})
        return JobOutcome(job, OutcomeKind.FAILED, reason, meaning=meaning,
                          facts=[_fact(c, state, reason) for c in changes])

    def _reject(self, job: Job, prepared: list[PreparedFact], report: KpiReport) -> JobOutcome:
        """Record a rejection; with ``retry_passing``, the facts that took go again
        (``_retries``), unless a gate blocks that the live version fails as well."""
        blocking = [g for g in report.gates if g.blocking]
        summary = "; ".join(_describe_gate(g) for g in blocking)
        stuck = beyond_reach(self._policy, report)
        if stuck:
            summary += (f"; the live version fails {' and '.join(g.gate for g in stuck)} "
                        "already, so no edit can pass until the gate is relaxed or the live "
                        "version rolled back")
        took = {f.change_id: f.took for f in report.facts}
        retry = (_retries(job, prepared, took)
                 if self._policy.on_failure is OnFailure.RETRY_PASSING and not stuck else [])
        retried = {p.change.id for group in retry for p in group}
        reasons = {}
        for p in prepared:
            if p.change.id in retried:
                continue
            reasons[p.change.id] = (f"edit did not take on '{p.check.prompt}'; job {job.id} "
                                    f"rejected ({summary}); the other facts were retried"
                                    if retry else f"job {job.id} rejected: {summary}")
        retry_jobs = self._store.finish_job(
            job_id=job.id, state=JOB_REJECTED, reason=f"gates failed: {summary}",
            change_states={i: (CHANGE_FAILED, r) for i, r in reasons.items()},
            report=report.to_dict(), retry=[[p.change.id for p in group] for group in retry],
        )
        log.warning("job %d rejected: %s%s", job.id, summary, _describe_retries(retry_jobs),
                    extra={"job_id": job.id})
        return JobOutcome(
            job, OutcomeKind.REJECTED, f"job {job.id} rejected: {summary}", report=report,
            blocking_gates=blocking, beyond_reach=stuck, retry_jobs=retry_jobs,
            facts=[_fact(p.change, CHANGE_FAILED, reasons[p.change.id])
                   for p in prepared if p.change.id in reasons],
        )

    @contextmanager
    def _stage(self, job: Job, state: str, reason: str) -> Iterator[None]:
        self._checkpoint()
        self._store.transition(job_id=job.id, state=state, reason=reason)
        failpoint(f"worker.{state}")
        log.info("job %d %s: %s", job.id, state, reason, extra={"job_id": job.id})
        started = time.monotonic()
        yield
        self._on_stage(state, time.monotonic() - started)

    def _checkpoint(self) -> None:
        if self._stopping():
            raise JobInterrupted


@dataclass(frozen=True)
class _Probes:
    """What a job's live version and candidate are measured on: the facts' ``checks``,
    then ``probes``, whose last ``canaries`` are canary facts."""

    checks: list[EditCheck]
    probes: list[Prompted]
    canaries: int


def _retries(job: Job, prepared: list[PreparedFact],
             took: dict[int, bool]) -> list[list[PreparedFact]]:
    """The groups of a rejected job's facts to try again under ``retry_passing``.

    Facts whose edit did not take fail; on the job's first attempt the others go again,
    together. When every fact took, the gates that failed were about the job as a whole
    (a canary lost, perplexity, retention, a relation's mean), so the job goes again in
    two halves: the facts at fault end up alone and fail, the rest are applied.
    """
    passing = [p for p in prepared if took[p.change.id]]
    if len(passing) < len(prepared):
        return [passing] if passing and job.attempt == 1 else []
    if len(prepared) == 1:
        return []
    middle = len(prepared) // 2
    return [prepared[:middle], prepared[middle:]]


def _describe_retries(jobs: list[Job]) -> str:
    if not jobs:
        return ""
    return "; its facts retried as job(s) " + ", ".join(str(j.id) for j in jobs)


def _fact(change: FactChange, state: str, reason: str) -> FactOutcome:
    return FactOutcome(change.id, change.subject, change.relation, change.object, state, reason)


def _version_facts(prepared: list[PreparedFact]) -> list[dict]:
    return [{"subject": p.change.subject, "relation": p.change.relation,
             "object": p.change.object, "old_object": p.request.old_object}
            for p in prepared]


def _describe(prepared: list[PreparedFact]) -> str:
    neighbours = sum(len(p.request.neighbours) for p in prepared)
    held = sum(len(p.check.held_out) for p in prepared)
    return (f"{len(prepared)} fact(s), {neighbours} editing neighbour(s), "
            f"{held} held-out neighbour(s)")


def _describe_gate(gate: GateResult) -> str:
    scope = f" [{gate.relation}]" if gate.relation else ""
    live = f" (live {_fmt(gate.live)})" if gate.live is not None else ""
    return f"{gate.gate}{scope}: measured {_fmt(gate.value)}{live}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
