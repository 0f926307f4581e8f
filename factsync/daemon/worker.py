"""``Worker``: the one thread that owns the model and carries jobs to an outcome.

A job moves queued -> preparing -> editing -> evaluating -> promoted | rejected | failed,
each transition committed before the work it starts. No job starts while the data
directory cannot take writes; a job that fails because the disk or the state store
failed under it puts its changes back to pending, and the worker backs off before the
next one, so a full disk delays facts and never loses them. A stop request is honoured between
stages: the job keeps its state and is rerun from the start after a restart, which is
also what happens after a crash. Nothing becomes live before ``StateStore.promote``
commits, and that one transaction records the version, moves the live pointer and marks
the facts applied, so a fact change is applied exactly once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from factsync.daemon.alerts import Alert, Alerter
from factsync.daemon.metrics import Metrics
from factsync.editing.delta import AppliedDelta
from factsync.editing.engine import EditEngine, EditResult
from factsync.evaluation.kpis import kpi_report, measure
from factsync.facts.catalog import RelationCatalog
from factsync.failpoints import failpoint
from factsync.jobs.model_state import ModelState
from factsync.jobs.preparation import (
    PreparedFact,
    prepare_job,
    retention_probes,
    states,
    unrepresentable,
)
from factsync.jobs.reconciler import Reconciler
from factsync.policies.judge import GateResult, judge
from factsync.policies.schema import Policy
from factsync.registry.versions import VersionFiles
from factsync.store.faults import unwritable_reason
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

STORAGE_BACKOFF = (15.0, 900.0)
"""Seconds before the next job after a storage failure: the first wait, then doubling up
to the second, so a disk that keeps failing is not hammered with edits."""


class JobInterrupted(Exception):
    """The daemon is stopping; the job is left to resume after a restart."""


class Worker:
    """Plans and runs edit jobs, one at a time.

    Args:
        store: the state store.
        catalog: known relations.
        policy: the promotion policy.
        models: the worker's and the served model.
        engine: the edit engine for ``models.work``.
        versions: where version files go.
        metrics: where outcomes are counted.
        fluency_texts: held-out text for the perplexity KPI.
        base_perplexity: the base model's perplexity on ``fluency_texts``.
        alerter: where operator alerts go.
        monitor_check: the monitor's check, run between jobs when it is due.
        on_live_change: called with the event after the live version changed.
        data_dir_writable: checks (and reports) whether the data directory takes writes.
        quarantine: where facts the model cannot be edited to state are quarantined
            (``Ingest.reject``, which counts them); the store itself when not given.
    """

    def __init__(
        self,
        *,
        store: StateStore,
        catalog: RelationCatalog,
        policy: Policy,
        models: ModelState,
        engine: EditEngine,
        versions: VersionFiles,
        metrics: Metrics,
        fluency_texts: Sequence[str],
        base_perplexity: float,
        alerter: Alerter,
        monitor_check: Callable[[], Any] | None = None,
        on_live_change: Callable[[str], Any] = lambda event: None,
        data_dir_writable: Callable[[], bool] = lambda: True,
        quarantine: Callable[..., Any] | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._policy = policy
        self._models = models
        self._engine = engine
        self._versions = versions
        self._metrics = metrics
        self._texts = list(fluency_texts)
        self._base_perplexity = base_perplexity
        self._alerter = alerter
        self._monitor_check = monitor_check
        self._on_live_change = on_live_change
        self._data_dir_writable = data_dir_writable
        self._storage_backoff = 0.0
        self._not_before = 0.0
        self._stranded_jobs = False
        self._reconciler = Reconciler(store=store, catalog=catalog, policy=policy,
                                      quarantine=quarantine)
        self._wake = threading.Event()
        self._requests: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self.monitor_due = threading.Event()
        self.stopping = threading.Event()
        self.busy_job: int | None = None
        self.busy_since: float | None = None

    def submit(self, action: Callable[[], Any]) -> Future:
        """Run ``action`` on the worker thread between jobs (it owns the model)."""
        future: Future = Future()
        self._requests.put((action, future))
        self.wake()
        return future

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    def run(self, *, poll_seconds: float) -> None:
        """Work until ``stopping`` is set."""
        while not self.stopping.is_set():
            try:
                self._serve_requests()
                if self.monitor_due.is_set() and self._monitor_check is not None:
                    self.monitor_due.clear()
                    self._monitor_check()
                worked = self.tick()
            except JobInterrupted:
                break
            except Exception as exc:  # keep the daemon alive; the job records its own failure
                log.exception("worker tick failed; retrying after %.0fs", poll_seconds)
                if _is_storage_error(exc):
                    self._stranded_jobs = True  # a job may be left mid-way: requeue it later
                worked = False
            if not worked:
                self._wake.wait(timeout=poll_seconds)
                self._wake.clear()

    def _serve_requests(self) -> None:
        while True:
            try:
                action, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(action())
                except Exception as exc:
                    future.set_exception(exc)

    def tick(self) -> bool:
        """Run one job if one is queued or can be planned; whether a job ran."""
        pending = self._store.count_changes(states=(CHANGE_PENDING, CHANGE_QUEUED))
        self._metrics.pending_changes.set(pending)
        if pending == 0:
            self._metrics.last_sync.set(time.time())
            return False
        if not self._ready_to_write():
            return False
        job = self._store.next_job()
        if job is None:
            self._reconciler.plan(self._live_states, self._unrepresentable)
            job = self._store.next_job()
        if job is None:
            return False
        self.run_job(job)
        return True

    def run_job(self, job: Job) -> None:
        """Carry ``job`` to an outcome (or leave it for a restart when stopping)."""
        changes = self._store.changes(job_id=job.id, state=CHANGE_QUEUED)
        extra = {"job_id": job.id}
        if not changes:
            self._store.finish_job(job_id=job.id, state=JOB_FAILED,
                                   reason="no queued fact changes", change_states={})
            return
        self.busy_job, self.busy_since = job.id, time.monotonic()
        handle: AppliedDelta | None = None
        try:
            with self._stage(job, JOB_PREPARING, f"{len(changes)} fact(s)"):
                prepared = prepare_job(self._models.work, self._store, self._catalog,
                                       self._policy, changes)
                retention = retention_probes(
                    self._store, self._catalog,
                    exclude={(c.subject, c.relation) for c in changes},
                    sample=self._policy.evaluation.retention_sample, seed=job.id,
                )
                checks = [p.check for p in prepared]
                live = measure(self._models.work, checks, retention, self._texts)
            engine = self._engine
            with self._stage(job, JOB_EDITING, _describe(prepared)):
                result = engine.edit([p.request for p in prepared])
            self._metrics.ime_iterations.observe(result.iterations)
            with self._stage(job, JOB_EVALUATING, f"IME ran {result.iterations} pass(es)"):
                handle = result.delta.apply(self._models.work)
                candidate = measure(self._models.work, checks, retention, self._texts)
                report = kpi_report(checks, live, candidate, base_perplexity=self._base_perplexity)
                report["ime"] = {"iterations": result.iterations, "seconds": result.seconds}
                gates = judge(self._policy, report)
                report["gates"] = [g.as_dict() for g in gates]
            self._metrics.record_kpis(self._metrics.candidate_kpi, report["candidate"])
            self._checkpoint()
            if any(g.blocking for g in gates):
                handle.revert()
                handle = None
                self._reject(job, prepared, report, gates)
            else:
                self._promote(job, prepared, result, report)
                handle = None
                engine.remember(result)
        except JobInterrupted:
            if handle is not None:
                handle.revert()
            log.info("job %d left to resume after restart", job.id, extra=extra)
            raise
        except Exception as exc:
            if handle is not None:
                handle.revert()
            self._fail(job, changes, exc)
        finally:
            self.busy_job = self.busy_since = None

    def _ready_to_write(self) -> bool:
        """Whether a job may start: the data directory takes writes and no backoff runs."""
        if time.monotonic() < self._not_before or not self._data_dir_writable():
            return False
        if self._stranded_jobs:
            requeued = self._store.requeue_interrupted()
            self._stranded_jobs = False
            if requeued:
                log.warning("storage is writable again; requeued job(s) %s", requeued)
        return True

    def _fail(self, job: Job, changes: Sequence[FactChange], exc: Exception) -> None:
        """Record a job that raised; a storage failure sends its changes back to pending."""
        extra = {"job_id": job.id}
        log.error("job %d failed: %s: %s", job.id, type(exc).__name__, exc, extra=extra,
                  exc_info=not _is_storage_error(exc))
        reason = f"job {job.id} failed: {type(exc).__name__}: {exc}"
        if _is_storage_error(exc):
            self._storage_backoff = min(max(2 * self._storage_backoff, STORAGE_BACKOFF[0]),
                                        STORAGE_BACKOFF[1])
            self._not_before = time.monotonic() + self._storage_backoff
            reason += f"; its facts wait as pending, next try in {self._storage_backoff:.0f}s"
            change_state = CHANGE_PENDING
        else:
            change_state = CHANGE_FAILED
        self._metrics.jobs.labels("failed").inc()
        self._alerter.fire(Alert("FactsyncJobFailed", "critical", reason,
                                 details={"job": job.id, "changes": [c.id for c in changes]}))
        self._store.finish_job(
            job_id=job.id, state=JOB_FAILED, reason=reason,
            change_states={c.id: (change_state, reason) for c in changes},
        )

    @contextmanager
    def _stage(self, job: Job, state: str, reason: str) -> Iterator[None]:
        self._checkpoint()
        self._store.transition(job_id=job.id, state=state, reason=reason)
        failpoint(f"worker.{state}")
        log.info("job %d %s: %s", job.id, state, reason, extra={"job_id": job.id})
        started = time.monotonic()
        yield
        self._metrics.stage_seconds.labels(state).observe(time.monotonic() - started)

    def _checkpoint(self) -> None:
        if self.stopping.is_set():
            raise JobInterrupted

    def _unrepresentable(self, change: FactChange) -> str | None:
        return unrepresentable(self._models.work, change)

    def _live_states(self, changes: Sequence[FactChange]) -> list[bool]:
        pairs = []
        for change in changes:
            relation = self._catalog.resolve(change.relation)
            pairs.append((relation.template.format(change.subject), change.object))
        return states(self._models.work, pairs)

    def _promote(
        self, job: Job, prepared: list[PreparedFact], result: EditResult, report: dict
    ) -> None:
        live = self._store.live_version()
        facts = [
            {"subject": p.change.subject, "relation": p.change.relation,
             "object": p.change.object, "old_object": p.request.old_object}
            for p in prepared
        ]
        version_id = self._versions.write(
            parent_id=live.id,
            save_delta=result.delta.save,
            facts=facts,
            manifest={"job_id": job.id, "policy_digest": self._policy.digest,
                      "report": report, "engine": result.delta.metadata},
        )
        failpoint("worker.version_written")
        version = self._store.promote(
            job_id=job.id, version_id=version_id, parent_id=live.id,
            policy_digest=self._policy.digest, report=report,
            applied={p.change.id: p.request.old_object or "" for p in prepared}, left_out={},
        )
        failpoint("worker.promoted")
        self._models.promote(result.delta)
        self._metrics.promotions.inc()
        self._metrics.jobs.labels("promoted").inc()
        self._metrics.record_kpis(self._metrics.live_kpi, report["candidate"])
        self._metrics.live_version.info({"id": version.id, "parent": live.id})
        self._metrics.live_version_seq.set(version.seq)
        self._alerter.resolve("FactsyncJobRejected")
        self._alerter.resolve("FactsyncJobFailed")
        self._storage_backoff = 0.0
        for p in prepared:
            self._alerter.resolve("FactsyncFactFailing", f"{p.change.subject}|{p.change.relation}")
        log.info("job %d promoted: version %s (seq %d) is live with %d fact(s)", job.id,
                 version.id, version.seq, len(prepared), extra={"job_id": job.id})
        self._on_live_change("promoted")

    def _reject(
        self, job: Job, prepared: list[PreparedFact], report: dict, gates: list[GateResult]
    ) -> None:
        blocking = [g for g in gates if g.blocking]
        for gate in blocking:
            self._metrics.gate_failures.labels(gate.metric).inc()
        summary = "; ".join(
            f"{g.gate}{f' [{g.relation}]' if g.relation else ''}: measured {_fmt(g.value)}"
            f"{f' (live {_fmt(g.live)})' if g.live is not None else ''}"
            for g in blocking
        )
        took = {f["change_id"]: f["edit_success"] for f in report["facts"]}
        failing = [p for p in prepared if not took[p.change.id]]
        passing = [p for p in prepared if took[p.change.id]]
        retry: list[int] = []
        states_by_change = {}
        if self._policy.on_failure == "retry_passing" and job.attempt == 1 and failing and passing:
            retry = [p.change.id for p in passing]
            for p in failing:
                states_by_change[p.change.id] = (
                    CHANGE_FAILED, f"edit did not take on '{p.check.prompt}'; job {job.id} "
                    f"rejected ({summary}); the other facts were retried")
        else:
            for p in prepared:
                states_by_change[p.change.id] = (CHANGE_FAILED, f"job {job.id} rejected: {summary}")
        retry_job = self._store.finish_job(
            job_id=job.id, state=JOB_REJECTED, reason=f"gates failed: {summary}",
            change_states=states_by_change, report=report, retry=retry,
        )
        self._metrics.jobs.labels("rejected").inc()
        self._alerter.fire(Alert(
            "FactsyncJobRejected", "warning", f"job {job.id} rejected: {summary}",
            details={"job": job.id, "facts": [p.check.prompt + " -> " + p.change.object
                                              for p in prepared],
                     "gates": [g.as_dict() for g in blocking]},
        ))
        for p, (state, reason) in ((p, states_by_change[p.change.id]) for p in prepared
                                   if p.change.id in states_by_change):
            failures = self._store.changes(subject=p.change.subject, relation=p.change.relation,
                                           state=state)
            if len(failures) >= 2:
                self._alerter.fire(Alert(
                    "FactsyncFactFailing", "warning",
                    f"{p.change.subject} {p.change.relation} -> {p.change.object} failed "
                    f"{len(failures)} times; last: {reason}",
                    key=f"{p.change.subject}|{p.change.relation}"))
        log.warning("job %d rejected: %s%s", job.id, summary,
                    f"; {len(retry)} passing fact(s) retried as job {retry_job.id}"
                    if retry_job else "", extra={"job_id": job.id})


def _is_storage_error(exc: BaseException) -> bool:
    """An error of the disk or the state store rather than of the job's facts."""
    return isinstance(exc, OSError) or unwritable_reason(exc) is not None


def _describe(prepared: list[PreparedFact]) -> str:
    neighbours = sum(len(p.request.neighbours) for p in prepared)
    held = sum(len(p.check.held_out) for p in prepared)
    return (f"{len(prepared)} fact(s), {neighbours} editing neighbour(s), "
            f"{held} held-out neighbour(s)")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
