"""``Daemon``: wires the store, connectors, worker, metrics and API into one process.

Start-up order: take the data directory's lock, open the store and requeue jobs a crash
left half-way, serve metrics and the API (``/readyz`` says 503 while loading), read and
watch the connectors, then, in the worker thread, load the base model, rebuild the live
engine on the base weights, restore the live version (weights and engine state) through
``LiveVersion`` and start working.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import IO, Any

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, start_http_server

from factsync.connectors.base import Connector
from factsync.daemon.alerts import (
    Alert,
    Alerter,
    AlertmanagerNotifier,
    Notifier,
    WebhookNotifier,
)
from factsync.daemon.api import ApiContext, ApiServer
from factsync.daemon.config import DaemonConfig
from factsync.daemon.connectors import build_connector
from factsync.daemon.data_dir_lock import lock_data_dir
from factsync.daemon.export_verification import ExportVerifier, verification_probes
from factsync.daemon.exporting import Exporter
from factsync.daemon.host_health import HostHealth
from factsync.daemon.ingest import Ingest
from factsync.daemon.live_reporting import LiveReporter
from factsync.daemon.metrics import Metrics
from factsync.daemon.monitor import Monitor
from factsync.daemon.worker import Worker
from factsync.editing.build import build_engine
from factsync.editing.cancellation import WorkCancelled
from factsync.evaluation.fluency import perplexity
from factsync.evaluation.heldout_text import FLUENCY_TEXTS
from factsync.evaluation.kpis import Prompted
from factsync.executors.build import build_executor
from factsync.executors.local import Executor
from factsync.executors.settings import ExecutorType
from factsync.facts.catalog import RelationCatalog
from factsync.jobs.canaries import choose_canary_facts
from factsync.jobs.live import LiveVersion
from factsync.jobs.model_state import ModelState
from factsync.jobs.monitoring import LiveChecker
from factsync.jobs.pipeline import JobRunner
from factsync.jobs.reconciler import Reconciler
from factsync.models.loading import default_model_dir, load_model
from factsync.models.precision import keep_edit_layers_in_float32
from factsync.policies.schema import OnRollback, Policy, load_policy
from factsync.registry.exports import ExportDir
from factsync.registry.serving import (
    SGLANG,
    VLLM,
    RuntimeLoraNotifier,
    ServingNotifier,
    WebhookServingNotifier,
)
from factsync.registry.versions import VersionFiles
from factsync.store.store import StateStore

log = logging.getLogger(__name__)

STATE_FILE = "state.sqlite"
STOP_GRACE_SECONDS = 30.0
"""How long a stop waits for the running job stage; after that the job resumes on restart."""


class Daemon:
    """One factsync process on one data directory.

    ``Daemon.open`` takes the data directory and opens what lives in it; the constructor
    only assembles the parts; ``start`` starts the servers, connectors, schedules and
    the worker thread, which loads the model. Until the model is loaded, ``models``,
    ``worker``, ``monitor`` and ``live`` are ``None`` and ``/readyz`` says so.

    Args:
        config: the daemon's configuration.
        policy: the promotion policy.
        store: the opened state store.
        versions: the version files.
        lock: the held data-directory lock (closed by ``stop``).
        registry: where metrics are registered (a fresh one when not given).
    """

    def __init__(
        self, *, config: DaemonConfig, policy: Policy, store: StateStore, versions: VersionFiles,
        lock: IO[str] | None = None, registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.policy = policy
        self.catalog = relation_catalog(config)
        self.store = store
        self.versions = versions
        self.alerter = Alerter(_notifiers(config), self.metrics)
        self.health = HostHealth(
            data_dir=config.state_dir, model_dir=model_dir(config),
            min_free_bytes=int(config.min_free_mb * 2**20), metrics=self.metrics,
            alerter=self.alerter,
        )
        priorities = {c.source_name: c.priority for c in config.connectors}
        priorities["api"] = config.api.push_priority
        self.ingest = Ingest(store=store, catalog=self.catalog, metrics=self.metrics,
                             on_change=self._wake, priorities=priorities)
        self.api = ApiServer(
            ApiContext(store=store, ingest=self.ingest, models=lambda: self.models,
                       status=self.status, wake=self._wake, rollback=self.request_rollback,
                       token=config.api.token, max_body_bytes=config.api.max_body_bytes),
            host=config.api.host, port=config.api.port,
        )
        self.connectors: list[Connector] = [build_connector(spec, config, self.ingest)
                                            for spec in config.connectors]
        self.exporter: Exporter | None = None
        self.models: ModelState | None = None
        self.worker: Worker | None = None
        self.monitor: Monitor | None = None
        self.live: LiveVersion | None = None
        self.failed: str | None = None
        self._starting = "not started"
        self._start_progress: dict[str, int] = {}  # percent last logged, by stage
        self._lock_handle = lock
        self._closers: list[Any] = [self.alerter.close]
        self._worker_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @classmethod
    def open(cls, config: DaemonConfig, *, registry: CollectorRegistry | None = None) -> Daemon:
        """Take ``config``'s data directory (raises ``AlreadyRunning`` if another process
        holds it), open its store and version files, and requeue jobs a crash left
        half-way."""
        policy = load_policy(config.policy) if config.policy else Policy()
        state_dir = config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_data_dir(state_dir)
        store = StateStore(state_dir / STATE_FILE)
        versions = VersionFiles(state_dir / "versions")
        versions.prune({v.id for v in store.versions()})
        requeued = store.requeue_interrupted()
        if requeued:
            log.warning("requeued job(s) %s left unfinished by the last run", requeued)
        return cls(config=config, policy=policy, store=store, versions=versions, lock=lock,
                   registry=registry)

    # lifecycle

    def start(self) -> None:
        """Start everything; the model loads in the background."""
        self.health.check()
        self.metrics.up.set(1)
        self.metrics.quarantine_size.set(self.store.quarantine_count())
        self.metrics.record_live(self.store.live_version())
        server, _ = start_http_server(self.config.metrics.port, self.config.metrics.host,
                                      registry=self.registry)
        self._closers.append(server.shutdown)
        log.info("metrics on http://%s:%d/metrics", self.config.metrics.host,
                 self.config.metrics.port)
        self.api.start()
        self._closers.append(self.api.stop)
        scheduler = BackgroundScheduler(daemon=True)
        for spec, connector in zip(self.config.connectors, self.connectors, strict=True):
            report = connector.scan()
            log.info("%s: read %d row(s), %d quarantined%s", connector.name, report.rows,
                     report.rejected, f"; errors: {report.errors}" if report.errors else "")
            connector.start()
            self.metrics.watch_connector(connector.name, connector.health)
            scheduler.add_job(
                self._full_scan, "interval", args=[connector],
                seconds=spec.full_scan_seconds or self.config.schedules.full_scan_seconds,
                id=f"full-scan-{connector.name}", max_instances=1, coalesce=True,
            )
        scheduler.add_job(self.health.check, "interval",
                          seconds=self.config.schedules.health_check_seconds, id="host-health",
                          max_instances=1, coalesce=True)
        scheduler.add_job(self._monitor_due, "interval",
                          seconds=self.policy.monitor.interval_seconds, id="monitor",
                          max_instances=1, coalesce=True)
        scheduler.add_job(self._watch_stuck_job, "interval", seconds=60, id="stuck-job",
                          max_instances=1, coalesce=True)
        scheduler.start()
        self._closers.append(lambda: scheduler.shutdown(wait=False))
        self._worker_thread = threading.Thread(target=self._work, name="worker", daemon=True)
        self._worker_thread.start()

    def stop(self) -> None:
        """Stop cleanly: no new job starts; the running stage gets a grace period."""
        log.info("stopping")
        self._stopping.set()
        if self.worker is not None:
            self.worker.stopping.set()
            self.worker.wake()
        for connector in self.connectors:
            connector.stop()
        if self._worker_thread is not None:
            self._worker_thread.join(timeout=STOP_GRACE_SECONDS)
            if self._worker_thread.is_alive():
                log.warning("job %s still running after %.0fs; it resumes after restart",
                            self.worker.busy_job if self.worker else None, STOP_GRACE_SECONDS)
        for close in reversed(self._closers):
            close()
        self.metrics.up.set(0)
        if not (self._worker_thread and self._worker_thread.is_alive()):
            self.store.close()
        if self._lock_handle is not None:
            self._lock_handle.close()
        log.info("stopped")

    def run_until_signalled(self) -> None:
        """Start, then run until SIGTERM or SIGINT, then stop."""
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.start()
        while not stop.wait(timeout=1.0):
            if self.failed:
                break
        self.stop()
        if self.failed:
            raise RuntimeError(self.failed)

    # status

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` and ``factsync status`` show."""
        live = self.store.live_version()
        return {
            "ready": self.models is not None and self.worker is not None and not self.failed,
            "starting": self.failed or self._starting,
            "live_version": {"id": live.id, "seq": live.seq},
            "live_history": self.store.live_history()[-10:],
            "alerts": [{"name": a.name, "key": a.key, "summary": a.summary}
                       for a in self.alerter.active()],
            "pending_changes": self.store.count_changes(states=("pending", "queued")),
            "jobs": self.store.count_jobs(),
            "running_job": self.worker.busy_job if self.worker else None,
            "quarantined": self.store.quarantine_count(),
            "policy": {"name": self.policy.name, "digest": self.policy.digest},
            "connectors": [
                {"name": c.name, "up": c.health.up, "last_success": c.health.last_success,
                 "last_error": c.health.last_error}
                for c in self.connectors
            ],
            "pid": os.getpid(),
        }

    def request_rollback(self, to_version_id: str | None, *, wait_seconds: float = 60.0) -> dict:
        """An operator's rollback, run on the worker thread; waits up to ``wait_seconds``."""
        if self.worker is None or self.live is None:
            raise RuntimeError("the daemon is still starting")
        live = self.store.live_version()
        target = to_version_id or live.parent_id
        if target is None:
            raise ValueError("the live version is the base model; there is nothing before it")
        owner = self.live
        future = self.worker.submit(lambda: owner.rollback(
            to_version_id=target, trigger="operator",
            reason=f"operator rollback from {live.id} to {target}",
            requeue=self.policy.monitor.on_rollback is OnRollback.REQUEUE))
        try:
            rolled = future.result(timeout=wait_seconds)
        except TimeoutError:
            return {"queued": True, "to": target}
        return {"queued": False, "to": target, "rolled_back": rolled}

    # internals

    def _monitor_due(self) -> None:
        if self.worker is not None:
            self.worker.monitor_due.set()
            self.worker.wake()

    def _watch_stuck_job(self) -> None:
        worker = self.worker
        if worker is None:
            return
        since = worker.busy_since
        limit = self.config.alerts.stuck_job_seconds
        if since is not None and time.monotonic() - since > limit:
            self.alerter.fire(Alert("FactsyncJobStuck", "warning",
                                    f"job {worker.busy_job} has run for over {limit:.0f}s",
                                    details={"job": worker.busy_job}))
        else:
            self.alerter.resolve("FactsyncJobStuck")

    def _wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    def _report_start(self, stage: str, done: float) -> None:
        """Show how far a start-up stage has got in ``/status``, and log each tenth."""
        percent = int(100 * done)
        previous = self._start_progress.get(stage, -10)
        self._starting = f"{stage}: {percent}%"
        if percent // 10 > previous // 10:
            log.info("start-up: %s, %d%% done", stage, percent)
            self._start_progress[stage] = percent

    def _export_verifier(self, canaries: list[Prompted]) -> ExportVerifier | None:
        """What checks each export against the live model, unless the config turns it off.

        Each verification probes the facts the export adds, a fresh sample of the
        applied facts (so over many exports every fact gets checked) and every canary.
        """
        export = self.config.export
        if not export.verify:
            return None
        samples = itertools.count()

        def probes(version: str, served: str | None) -> list[Prompted]:
            return verification_probes(self.store, self.catalog, version=version,
                                       served=served, sample=export.verify_sample,
                                       seed=next(samples)) + canaries

        return ExportVerifier(device=self.config.model.device,
                              dtype=self.config.model.dtype, probes=probes,
                              tolerance=export.verify_tolerance)

    def _executor(self) -> Executor:
        """The configured executor, closed with the daemon; a Ray fleet reports its
        workers in the metrics."""
        settings = self.config.executor
        if settings.type is ExecutorType.RAY:
            self._starting = (f"starting {settings.workers} Ray worker(s) "
                              f"({settings.address or 'a local Ray instance'})")
        executor = build_executor(settings, source=str(model_dir(self.config)),
                                  device=self.config.model.device,
                                  dtype=self.config.model.dtype,
                                  edit_layers=self.policy.editing.engine_settings().layers)
        self._closers.append(executor.close)
        status = getattr(executor, "status", None)
        if status is not None:
            self.metrics.watch_fleet(status)
        return executor

    def _full_scan(self, connector: Connector) -> None:
        try:
            connector.scan()
        except Exception:
            log.exception("full scan of %s failed", connector.name)

    def _work(self) -> None:
        try:
            started = time.monotonic()
            self._starting = "loading the model"
            base = load_model(self.config.model.path, device=self.config.model.device,
                              dtype=self.config.model.dtype, home=self.config.caches,
                              trust_remote_code=self.config.model.trust_remote_code)
            self.health.model_loaded()
            keep_edit_layers_in_float32(base, self.policy.editing.engine_settings().layers)
            models = ModelState(base)
            base_perplexity = perplexity(base, list(FLUENCY_TEXTS))
            canary_facts = choose_canary_facts(models.work, self.store,  # base weights
                                               self.catalog)
            canaries = [fact.prompted for fact in canary_facts]
            self.metrics.model_load_seconds.set(time.monotonic() - started)
            executor = self._executor()
            self._starting = "building the edit engine (key statistics, context prefixes)"
            engine = build_engine(  # on the base weights, whichever version is live
                models.work, self.policy.editing.engine_settings(),
                self.config.model.statistics(),
                home=self.config.caches, cancelled=self._stopping.is_set,
                report=self._report_start, optimiser=executor.optimise,
            )
            exports = ExportDir(self.config.state_dir / "exports")
            for leftover in exports.clean():
                log.info("removed %s left by an interrupted export", leftover)
            exporter = Exporter(
                settings=self.config.export,
                exports=exports, versions=self.versions,
                store=self.store, models=models, base_model=str(model_dir(self.config)),
                notifiers=_serving_notifiers(self.config), alerter=self.alerter,
                metrics=self.metrics, verifier=self._export_verifier(canaries),
            )
            self.exporter = exporter
            self._closers.append(exporter.close)
            live = LiveVersion(store=self.store, versions=self.versions, models=models,
                               engine=engine, executor=executor)
            live.subscribe(LiveReporter(metrics=self.metrics, alerter=self.alerter))
            live.subscribe(lambda change: exporter.request_export(change.event.value))
            checker = LiveChecker(
                store=self.store, catalog=self.catalog, policy=self.policy, models=models,
                live=live, canaries=canaries, fluency_texts=FLUENCY_TEXTS,
                base_perplexity=base_perplexity, executor=executor,
            )
            self.monitor = Monitor(checker=checker, store=self.store, metrics=self.metrics,
                                   alerter=self.alerter)
            runner = JobRunner(
                store=self.store, catalog=self.catalog, policy=self.policy, models=models,
                engine=engine, live=live, fluency_texts=FLUENCY_TEXTS,
                base_perplexity=base_perplexity, canaries=canary_facts,
                stopping=lambda: self.worker is not None and self.worker.stopping.is_set(),
                on_stage=lambda stage, seconds: self.metrics.stage_seconds.labels(stage)
                .observe(seconds),
                executor=executor,
            )
            self.worker = Worker(
                store=self.store, catalog=self.catalog,
                reconciler=Reconciler(store=self.store, catalog=self.catalog,
                                      policy=self.policy, quarantine=self.ingest.reject),
                runner=runner, models=models, metrics=self.metrics, alerter=self.alerter,
                monitor_check=self.monitor.check,
                data_dir_writable=self.health.data_dir_writable,
            )
            lineage = self.store.lineage(version_id=self.store.live_version().id)
            self._starting = f"restoring the live version from {len(lineage)} version(s)"
            live.restore()
            self.live = live
            self.models = models
            self._starting = ""
            log.info("ready: live version %s, policy %s (%s)", self.store.live_version().id,
                     self.policy.name, self.policy.digest)
        except WorkCancelled as exc:
            log.info("start-up stopped (%s); what was finished is kept for the next start",
                     exc)
            return
        except Exception as exc:
            log.exception("start-up failed")
            self.failed = f"start-up failed: {type(exc).__name__}: {exc}"
            return
        if self._stopping.is_set():  # stopped while the worker was being built
            return
        self.worker.run(poll_seconds=self.config.schedules.worker_poll_seconds)


def _notifiers(config: DaemonConfig) -> list[Notifier]:
    alerts = config.alerts
    notifiers: list[Notifier] = []
    if alerts.webhook_url:
        notifiers.append(WebhookNotifier(alerts.webhook_url, timeout=alerts.timeout_seconds))
    if alerts.alertmanager_url:
        notifiers.append(
            AlertmanagerNotifier(alerts.alertmanager_url, timeout=alerts.timeout_seconds)
        )
    return notifiers


def relation_catalog(config: DaemonConfig) -> RelationCatalog:
    """The built-in relations with those the config adds or overrides."""
    return RelationCatalog.built_in(
        {k: {**v.__dict__, "alias": v.alias or k} for k, v in config.relations.items()})


def model_dir(config: DaemonConfig) -> Path:
    """The base model's directory the config names (the default model's cache for
    ``default``)."""
    if config.model.path == "default":
        return default_model_dir(config.caches)
    return Path(config.model.path).expanduser().absolute()


def _serving_notifiers(config: DaemonConfig) -> list[ServingNotifier]:
    export = config.export
    notifiers: list[ServingNotifier] = []
    if export.vllm_url:
        notifiers.append(RuntimeLoraNotifier(VLLM, export.vllm_url,
                                             prefix=export.vllm_adapter_prefix))
    if export.sglang_url:
        notifiers.append(RuntimeLoraNotifier(SGLANG, export.sglang_url,
                                             prefix=export.sglang_adapter_prefix))
    if export.webhook_url:
        notifiers.append(WebhookServingNotifier(export.webhook_url))
    return notifiers
