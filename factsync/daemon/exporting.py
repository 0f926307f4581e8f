"""``Exporter``: writes the live version for serving engines and tells them it changed.

After every promotion, rollback and start-up it writes the live version's PEFT LoRA
adapter (the cumulative delta from the base, SVD-truncated above ``max_rank``) and,
when asked, a merged checkpoint, each atomically with a ``current`` pointer. The export
runs on its own thread, so the worker goes on to the next job instead of waiting for
the SVD; changes that arrive while one export runs make one export of the version live
then. Serving engines are then notified on a second thread with retries; a
notification that keeps failing raises an alert and is counted, and the next change
tries again.
"""

from __future__ import annotations

import logging
import queue
import threading

from factsync.daemon.alerts import Alert, Alerter
from factsync.daemon.config import ExportConfig
from factsync.daemon.metrics import Metrics
from factsync.editing.delta import ModelDelta
from factsync.editing.lora import lora_factors
from factsync.jobs.model_state import ModelState
from factsync.registry.exports import ExportDir, write_peft_adapter
from factsync.registry.serving import LiveChange, ServingNotifier
from factsync.registry.versions import VersionFiles
from factsync.retry import with_retries
from factsync.store.store import StateStore

log = logging.getLogger(__name__)


class Exporter:
    """Exports the live version and keeps serving engines on it.

    Building one starts nothing: the export thread starts with the first
    ``request_export``, the thread that notifies serving engines with the first change
    there is to send, and ``close`` stops those that started.
    """

    def __init__(
        self, *, settings: ExportConfig, exports: ExportDir, versions: VersionFiles,
        store: StateStore, models: ModelState, base_model: str, notifiers: list[ServingNotifier],
        alerter: Alerter, metrics: Metrics, retries: int = 4, backoff_seconds: float = 2.0,
    ) -> None:
        self._settings = settings
        self._exports = exports
        self._versions = versions
        self._store = store
        self._models = models
        self._base_model = base_model
        self._notifiers = notifiers
        self._alerter = alerter
        self._metrics = metrics
        self._retries = retries
        self._backoff = backoff_seconds
        self._served: str | None = None
        self._queue: queue.Queue[LiveChange | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        self._requests: queue.Queue[str | None] = queue.Queue()
        self._exporter: threading.Thread | None = None
        self._threads_lock = threading.Lock()
        self._closed = False  # no new exports
        self._sending_closed = False  # no new notifications either

    def request_export(self, event: str) -> None:
        """Export the live version on the export thread, after ``event``; returns at once."""
        with self._threads_lock:
            if self._closed:
                return
            if self._exporter is None:
                self._exporter = threading.Thread(target=self._export_loop, name="exports",
                                                  daemon=True)
                self._exporter.start()
            self._requests.put(event)

    def export_live(self, event: str) -> dict | None:
        """Export the live version now and queue the serving notifications; a summary.

        A failure is logged and alerted, never raised: the live pointer has already moved
        and stays where it is.
        """
        try:
            summary = self._export(event)
        except Exception as exc:
            log.exception("exporting the live version failed")
            self._alerter.fire(Alert("FactsyncExportFailed", "critical",
                                     f"exporting the live version after {event} failed: {exc}"))
            return None
        self._alerter.resolve("FactsyncExportFailed")
        return summary

    def _export(self, event: str) -> dict:
        live = self._store.live_version()
        lineage = self._store.lineage(version_id=live.id)
        summary: dict = {"version": live.id, "event": event}
        adapter = merged = None
        if self._settings.adapter and lineage:
            chain = [ModelDelta.load(self._versions.delta_path(v.id)) for v in lineage]
            factors = lora_factors(chain, max_rank=self._settings.max_rank)
            errors = {path: f.relative_error for path, f in factors.items()}
            summary["adapter_error"] = max(errors.values())
            adapter = self._exports.write("adapter", live.id, lambda d: write_peft_adapter(
                d, {p: (f.a, f.b) for p, f in factors.items()}, base_model=self._base_model,
                fan_in_fan_out=self._models.work.spec.weight_layout == "in_out",
                metadata={"version": live.id, "versions": [v.id for v in lineage],
                          "svd_relative_error": errors, "max_rank": self._settings.max_rank}))
            summary["adapter"] = str(adapter)
        if self._settings.merged:
            merged = self._exports.write("merged", live.id, self._models.save_serving)
            summary["merged"] = str(merged)
        log.info("exported live version %s: %s", live.id, summary)
        if self._notifiers:
            self._send(LiveChange(event=event, version=live.id, previous=self._served,
                                  base=self._base_model,
                                  adapter=adapter, merged=merged))
        self._served = live.id
        return summary

    def _send(self, change: LiveChange) -> None:
        """Queue ``change`` for the serving engines, starting the sender thread if needed."""
        with self._threads_lock:
            if self._sender is None and not self._sending_closed:
                self._sender = threading.Thread(target=self._notify_loop, name="serving",
                                                daemon=True)
                self._sender.start()
            self._queue.put(change)

    def close(self, timeout: float = 10.0, export_timeout: float = 300.0) -> None:
        """Finish the export under way (up to ``export_timeout``) and send what is queued
        (up to ``timeout``), then stop; nothing starts afterwards. An export left undone is
        redone at the next start-up, which exports the live version.

        The export gets the longer wait because it runs inside torch: a process that
        exits while a thread is in there can abort instead of exiting cleanly.
        """
        with self._threads_lock:
            self._closed = True
        if self._exporter is not None:
            self._requests.put(None)
            self._exporter.join(timeout=timeout)
            if self._exporter.is_alive():
                log.info("waiting up to %.0fs more for the export under way", export_timeout)
                self._exporter.join(timeout=export_timeout)
                if self._exporter.is_alive():
                    log.error("the export under way did not finish; stopping without it")
        with self._threads_lock:
            self._sending_closed = True
        if self._sender is not None:
            self._queue.put(None)
            self._sender.join(timeout=timeout)

    def _export_loop(self) -> None:
        while (event := self._requests.get()) is not None:
            # An export reads the live version when it runs, so requests queued behind
            # this one add nothing but the last event's name.
            while True:
                try:
                    later = self._requests.get_nowait()
                except queue.Empty:
                    break
                if later is None:
                    self.export_live(event)
                    return
                event = later
            self.export_live(event)

    def _notify_loop(self) -> None:
        while (change := self._queue.get()) is not None:
            for notifier in self._notifiers:
                try:
                    with_retries(lambda n=notifier: n.notify(change), attempts=self._retries,
                                 backoff_seconds=self._backoff)
                except Exception as exc:  # every remote failure is alerted the same way
                    self._metrics.serving_failures.labels(notifier.name).inc()
                    self._alerter.fire(Alert(
                        "FactsyncServingNotifyFailed", "critical",
                        f"{notifier.name} was not switched to version {change.version} after "
                        f"{self._retries} tries: {exc}", key=notifier.name,
                        details={"version": change.version, "event": change.event}))
                    continue
                self._alerter.resolve("FactsyncServingNotifyFailed", notifier.name)
                log.info("%s now serves version %s", notifier.name, change.version)
