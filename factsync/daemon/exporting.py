"""``Exporter``: writes the live version for serving engines and tells them it changed.

After every promotion, rollback and start-up it writes the live version's PEFT LoRA
adapter (the cumulative delta from the base, SVD-truncated above ``max_rank``) and,
when asked, a merged checkpoint, each atomically. With a verifier, each is then loaded
the way a serving engine loads it and asked what the live model is asked
(``export_verification``); only exports that answer alike become ``current`` and are
announced, and one that does not is kept aside, alerted and counted. The export
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
import time
from pathlib import Path

from factsync.daemon.alerts import Alert, Alerter
from factsync.daemon.config import ExportConfig
from factsync.daemon.export_verification import (
    ADAPTER,
    BASE,
    MERGED,
    ExportVerifier,
    Verification,
)
from factsync.daemon.metrics import Metrics
from factsync.daemon.serving_base import ServingBase, serving_base
from factsync.durable import write_json
from factsync.editing.delta import ModelDelta
from factsync.editing.lora import LoraFactors, lora_factors
from factsync.jobs.model_state import ModelState, VersionMoved
from factsync.jobs.preparation import states
from factsync.registry.exports import ExportDir, write_peft_adapter
from factsync.registry.serving import LiveChange, ServingNotifier
from factsync.registry.versions import VersionFiles
from factsync.retry import with_retries
from factsync.store.records import Version
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
        alerter: Alerter, metrics: Metrics, verifier: ExportVerifier | None = None,
        retries: int = 4, backoff_seconds: float = 2.0,
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
        self._verifier = verifier
        self._retries = retries
        self._backoff = backoff_seconds
        self._served, self._served_base = exports.served()
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
        started = time.monotonic()
        try:
            serving, factors = self._plan(live.id, lineage, summary)
            written = self._write(live.id, serving, factors, summary)
            summary["write_seconds"] = time.monotonic() - started
            if self._verifier is not None and written:
                verdicts = self._verify(self._verifier, live.id, serving.base, written)
                summary["verification"] = {v.kind: v.summary(limit=5) for v in verdicts}
                summary["verify_seconds"] = time.monotonic() - started - summary["write_seconds"]
                if not self._accept(verdicts, written):
                    return summary
        except VersionMoved:
            log.info("version %s stopped being live before its export was done; the "
                     "export of the version live now follows", live.id)
            return summary | {"superseded": True}
        self._point_current(live.id, serving, written)
        log.info("exported live version %s: %s", live.id, summary)
        if self._notifiers:
            self._send(LiveChange(event=event, version=live.id, previous=self._served,
                                  base=serving.base, previous_base=self._served_base,
                                  adapter=written.get(ADAPTER), merged=written.get(MERGED)))
        self._served, self._served_base = live.id, serving.base
        self._exports.record_served(live.id, serving.base)
        return summary

    def _point_current(self, version: str, serving: ServingBase,
                       written: dict[str, Path]) -> None:
        """Point each kind's ``current`` at what serves ``version``: ``base/current`` at
        its fold (none on the base model), ``adapter/current`` at its adapter (none when
        it has no versions since its fold), ``merged/current`` at its checkpoint."""
        for kind in written:
            self._exports.point_current(kind, version)
        if ADAPTER not in written:
            self._exports.clear_current(ADAPTER)
        if serving.fold is None:
            self._exports.clear_current(BASE)
        else:
            self._exports.point_current(BASE, serving.fold)

    def _plan(self, version: str, lineage: list[Version],
              summary: dict) -> tuple[ServingBase, dict[str, LoraFactors]]:
        """The serving base of ``version`` and its adapter's factors, folding the version
        first when the adapter would need more than ``max_rank``."""
        serving = serving_base(lineage, self._store.folds(), self._base_model)
        if not (self._settings.adapter and serving.chain):
            return serving, {}
        deltas = [ModelDelta.load(self._versions.delta_path(v.id)) for v in serving.chain]
        factors = lora_factors(deltas)
        rank = max(f.rank for f in factors.values())
        summary["adapter_rank"] = rank
        if rank <= self._settings.max_rank:
            return serving, factors
        if not self._settings.fold:
            truncated = lora_factors(deltas, max_rank=self._settings.max_rank)
            summary["adapter_rank"] = self._settings.max_rank
            return serving, truncated
        checkpoint = self._exports.write(
            BASE, version, lambda d: self._models.save_serving(d, version_id=version))
        reason = (f"the adapter since {serving.fold or 'the base model'} would need rank "
                  f"{rank}, above export.max_rank {self._settings.max_rank}")
        self._store.record_fold(version_id=version, checkpoint=str(checkpoint), reason=reason)
        log.warning("folded version %s into a new serving base %s: %s; serving engines must "
                    "load that base", version, checkpoint, reason)
        summary |= {"folded": str(checkpoint), "adapter_rank": 0}
        return ServingBase(str(checkpoint), version, []), {}

    def _write(self, version: str, serving: ServingBase, factors: dict[str, LoraFactors],
               summary: dict) -> dict[str, Path]:
        """Write the adapter of ``factors`` and, when asked, the merged checkpoint."""
        written: dict[str, Path] = {}
        if factors:
            errors = {path: f.relative_error for path, f in factors.items()}
            summary["adapter_error"] = max(errors.values())
            written[ADAPTER] = self._exports.write(ADAPTER, version, lambda d: write_peft_adapter(
                d, {p: (f.a, f.b) for p, f in factors.items()}, base_model=serving.base,
                fan_in_fan_out=self._models.work.spec.weight_layout == "in_out",
                metadata={"version": version, "base": serving.base, "fold": serving.fold,
                          "versions": [v.id for v in serving.chain],
                          "svd_relative_error": errors, "max_rank": self._settings.max_rank}))
        if self._settings.merged:
            written[MERGED] = self._exports.write(
                MERGED, version, lambda d: self._models.save_serving(d, version_id=version))
        summary |= {"base": serving.base} | {kind: str(path) for kind, path in written.items()}
        return written

    def _verify(self, verifier: ExportVerifier, version: str, base: str,
                written: dict[str, Path]) -> list[Verification]:
        """Each export's verdict, the adapter loaded on ``base``.

        Raises:
            VersionMoved: ``version`` is no longer the served one.
        """
        probes = verifier.probes(version, self._served)
        with self._models.serving_at(version) as served:
            if served is None:
                raise VersionMoved(f"the served model no longer carries version {version}")
            live_answers = states(served, probes)
        return [verifier.verify(kind, version, path, probes, live_answers, base=Path(base))
                for kind, path in written.items()]

    def _accept(self, verdicts: list[Verification], written: dict[str, Path]) -> bool:
        """Record the verdicts beside the exports; alert and count the ones that fail.

        Returns whether every export passed: one diverging export holds back all of the
        version's, so serving engines never get a pair that disagrees.
        """
        for verdict in verdicts:
            write_json(written[verdict.kind] / "verification.json", verdict.summary(limit=200))
            self._metrics.export_agreement.labels(verdict.kind).set(verdict.agreement)
        diverged = [v for v in verdicts if not v.passed]
        if not diverged:
            self._alerter.resolve("FactsyncExportDiverged")
            return True
        for verdict in diverged:
            self._metrics.exports_diverged.labels(verdict.kind).inc()
            log.error("the %s export of version %s answers %d of %d probes unlike the live "
                      "model (tolerance %.1f%%); it is kept aside in %s and not served",
                      verdict.kind, verdict.version, len(verdict.differing),
                      len(verdict.answers), 100 * verdict.tolerance, written[verdict.kind])
        first = diverged[0]
        self._alerter.fire(Alert(
            "FactsyncExportDiverged", "critical",
            f"the {', '.join(v.kind for v in diverged)} export of version {first.version} "
            f"does not answer like the live model ({len(first.differing)} of "
            f"{len(first.answers)} probes differ); serving engines keep the previous export",
            details={v.kind: v.summary(limit=20) for v in diverged}))
        return False

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
