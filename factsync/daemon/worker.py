"""``Worker``: the one thread that owns the model; it plans jobs and runs them.

The job itself (stages, gates, promotion) is ``factsync.jobs``: this module only
decides when a job may start, runs it with ``JobRunner`` and turns its outcome into
metrics and alerts. No job starts while the data directory cannot take writes; a job
whose facts wait after a failure (storage or a temporary error) makes the worker back
off before the next one, so a full disk delays facts and never loses them. A stop
request is honoured between stages: the job keeps its state and is rerun from the start
after a restart, which is also what happens after a crash.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from factsync.daemon.alerts import Alert, Alerter
from factsync.daemon.metrics import Metrics
from factsync.facts.catalog import RelationCatalog
from factsync.jobs.model_state import ModelState
from factsync.jobs.outcomes import (
    JobInterrupted,
    JobOutcome,
    OutcomeKind,
    RetryMeaning,
    retry_meaning,
)
from factsync.jobs.pipeline import JobRunner
from factsync.jobs.preparation import live_states, unrepresentable
from factsync.jobs.reconciler import Reconciler
from factsync.store.records import CHANGE_PENDING, CHANGE_QUEUED, FactChange, Job
from factsync.store.store import StateStore

log = logging.getLogger(__name__)

BACKOFF = (15.0, 900.0)
"""Seconds before the next job after a job whose facts wait: the first wait, then
doubling up to the second, so a disk that keeps failing is not hammered with edits."""


class Worker:
    """Plans and runs edit jobs, one at a time.

    Args:
        store: the state store.
        catalog: known relations.
        reconciler: turns pending changes into jobs.
        runner: runs one job to an outcome.
        models: the worker's and the served model.
        metrics: where outcomes are counted.
        alerter: where operator alerts go.
        monitor_check: the monitor's check, run between jobs when it is due.
        data_dir_writable: checks (and reports) whether the data directory takes writes.
    """

    def __init__(
        self,
        *,
        store: StateStore,
        catalog: RelationCatalog,
        reconciler: Reconciler,
        runner: JobRunner,
        models: ModelState,
        metrics: Metrics,
        alerter: Alerter,
        monitor_check: Callable[[], Any] | None = None,
        data_dir_writable: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._reconciler = reconciler
        self._runner = runner
        self._models = models
        self._metrics = metrics
        self._alerter = alerter
        self._monitor_check = monitor_check
        self._data_dir_writable = data_dir_writable
        self._backoff = 0.0
        self._not_before = 0.0
        self._stranded_jobs = False
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
                if retry_meaning(exc) is RetryMeaning.STORAGE:
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
        self.busy_job, self.busy_since = job.id, time.monotonic()
        try:
            outcome = self._runner.run(job)
        except JobInterrupted:
            log.info("job %d left to resume after restart", job.id, extra={"job_id": job.id})
            raise
        finally:
            self.busy_job = self.busy_since = None
        self._report(outcome)

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

    def _report(self, outcome: JobOutcome) -> None:
        """Metrics, alerts and the back-off that follow a job's outcome."""
        self._metrics.jobs.labels(outcome.kind.value).inc()
        if outcome.report is not None:
            self._metrics.ime_iterations.observe(outcome.report.ime_iterations)
            self._metrics.record_kpis(self._metrics.candidate_kpi, outcome.report.candidate)
        if outcome.kind is OutcomeKind.PROMOTED:
            self._backoff = 0.0
            self._metrics.promotions.inc()
            self._alerter.resolve("FactsyncJobRejected")
            self._alerter.resolve("FactsyncJobFailed")
            for fact in outcome.facts:
                self._alerter.resolve("FactsyncFactFailing", f"{fact.subject}|{fact.relation}")
            log.info("%s", outcome.summary, extra={"job_id": outcome.job.id})
        elif outcome.kind is OutcomeKind.REJECTED:
            for gate in outcome.blocking_gates:
                self._metrics.gate_failures.labels(gate.metric.value).inc()
            # Past a gate the live version fails too, nothing more is applied until
            # someone relaxes the gate or rolls back.
            severity = "critical" if outcome.beyond_reach else "warning"
            self._alerter.fire(Alert(
                "FactsyncJobRejected", severity, outcome.summary,
                details={"job": outcome.job.id,
                         "gates": [g.as_dict() for g in outcome.blocking_gates],
                         "facts": [f"{f.subject} {f.relation} -> {f.object}"
                                   for f in outcome.facts]}))
            self._watch_failing_facts(outcome)
        else:
            summary = outcome.summary
            if outcome.meaning is not None and outcome.meaning.facts_wait:
                self._backoff = min(max(2 * self._backoff, BACKOFF[0]), BACKOFF[1])
                self._not_before = time.monotonic() + self._backoff
                summary += f", next try in {self._backoff:.0f}s"
            self._alerter.fire(Alert("FactsyncJobFailed", "critical", summary,
                                     details={"job": outcome.job.id,
                                              "changes": [f.change_id for f in outcome.facts]}))

    def _watch_failing_facts(self, outcome: JobOutcome) -> None:
        """Alert on facts that failed twice or more."""
        for fact in outcome.facts:
            failures = self._store.changes(subject=fact.subject, relation=fact.relation,
                                           state=fact.state)
            if len(failures) >= 2:
                self._alerter.fire(Alert(
                    "FactsyncFactFailing", "warning",
                    f"{fact.subject} {fact.relation} -> {fact.object} failed "
                    f"{len(failures)} times; last: {fact.reason}",
                    key=f"{fact.subject}|{fact.relation}"))

    def _unrepresentable(self, change: FactChange) -> str | None:
        return unrepresentable(self._models.work, change)

    def _live_states(self, changes: Sequence[FactChange]) -> list[bool]:
        return live_states(self._models.work, self._catalog, changes)
