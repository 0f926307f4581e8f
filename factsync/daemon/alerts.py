"""Operator alerts: a notifier interface, a JSON webhook, Alertmanager v2, and ``Alerter``.

``Alerter`` deduplicates: an alert (name, key) is sent once while it stays active with
the same summary, and a resolve message goes out when its condition clears. Delivery
runs on a background thread with retries and backoff; a delivery that still fails is
logged and counted in ``factsync_alert_delivery_failures_total``, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from factsync.daemon.metrics import Metrics
from factsync.http_client import post_json
from factsync.retry import with_retries

log = logging.getLogger(__name__)

ALERTMANAGER_HOLD = timedelta(hours=1)
"""A firing alert's endsAt: long enough that Alertmanager keeps it until it is resolved."""


@dataclass(frozen=True)
class Alert:
    """Something an operator should know.

    Attributes:
        name: the alert's name, e.g. ``FactsyncJobRejected``.
        severity: ``warning`` or ``critical``.
        summary: one line for a human.
        key: tells apart alerts of one name (a version id, a fact); may be empty.
        details: structured context (facts, gates, measured values).
    """

    name: str
    severity: str
    summary: str
    key: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Notifier(Protocol):
    """Somewhere alerts are delivered."""

    name: str

    def send(self, alert: Alert, *, resolved: bool) -> None:
        """Deliver one alert or its resolution; raise on failure."""


class WebhookNotifier:
    """POSTs ``{"status", "alert", "severity", "summary", "key", "details", "at"}``."""

    name = "webhook"

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout

    def send(self, alert: Alert, *, resolved: bool) -> None:
        """Deliver one message."""
        post_json(self.url, {
            "status": "resolved" if resolved else "firing",
            "alert": alert.name,
            "severity": alert.severity,
            "summary": alert.summary,
            "key": alert.key,
            "details": alert.details,
            "at": datetime.now(timezone.utc).isoformat(),
        }, timeout=self.timeout)


class AlertmanagerNotifier:
    """Posts to Alertmanager's v2 API (``POST /api/v2/alerts``)."""

    name = "alertmanager"

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.timeout = timeout
        self._started: dict[tuple[str, str], datetime] = {}

    def send(self, alert: Alert, *, resolved: bool) -> None:
        """Deliver one alert; a resolution ends it now."""
        now = datetime.now(timezone.utc)
        started = self._started.setdefault((alert.name, alert.key), now)
        if resolved:
            self._started.pop((alert.name, alert.key), None)
        labels = {"alertname": alert.name, "severity": alert.severity, "service": "factsync"}
        if alert.key:
            labels["key"] = alert.key
        post_json(self.url, [{
            "labels": labels,
            "annotations": {"summary": alert.summary,
                            "details": json.dumps(alert.details, default=str)[:4000]},
            "startsAt": started.isoformat(),
            "endsAt": (now if resolved else now + ALERTMANAGER_HOLD).isoformat(),
        }], timeout=self.timeout)


class Alerter:
    """Deduplicates alerts and delivers them to every notifier in the background.

    Building one starts nothing: the delivery thread starts with the first alert there
    is to deliver, and ``close`` stops it if it started.
    """

    def __init__(
        self, notifiers: list[Notifier], metrics: Metrics, *, retries: int = 3,
        backoff_seconds: float = 1.0,
    ) -> None:
        self._notifiers = notifiers
        self._metrics = metrics
        self._retries = retries
        self._backoff = backoff_seconds
        self._active: dict[tuple[str, str], Alert] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Alert, bool] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def fire(self, alert: Alert) -> None:
        """Raise ``alert`` unless the same one is already active."""
        with self._lock:
            if self._active.get((alert.name, alert.key)) == alert:
                return
            self._active[(alert.name, alert.key)] = alert
        self._metrics.alerts.labels(alert.name).inc()
        log.warning("alert %s%s: %s", alert.name, f" [{alert.key}]" if alert.key else "",
                    alert.summary)
        self._deliver_later(alert, resolved=False)

    def resolve(self, name: str, key: str = "") -> None:
        """Clear an active alert and send its resolution."""
        with self._lock:
            alert = self._active.pop((name, key), None)
        if alert is not None:
            log.info("alert %s%s resolved", name, f" [{key}]" if key else "")
            self._deliver_later(alert, resolved=True)

    def active(self) -> list[Alert]:
        """Alerts firing now."""
        with self._lock:
            return list(self._active.values())

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout``) and stop; nothing is sent after."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=timeout)

    def _deliver_later(self, alert: Alert, *, resolved: bool) -> None:
        with self._lock:
            if self._closed or not self._notifiers:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver_loop, name="alerts",
                                                daemon=True)
                self._thread.start()
            self._queue.put((alert, resolved))

    def _deliver_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            alert, resolved = item
            for notifier in self._notifiers:
                self._deliver(notifier, alert, resolved)

    def _deliver(self, notifier: Notifier, alert: Alert, resolved: bool) -> None:
        try:
            with_retries(lambda: notifier.send(alert, resolved=resolved),
                         attempts=self._retries, backoff_seconds=self._backoff)
        except Exception as exc:  # any failure of a remote end is handled the same way
            self._metrics.alert_failures.labels(notifier.name).inc()
            log.error("could not deliver alert %s to %s after %d tries: %s", alert.name,
                      notifier.name, self._retries, exc)
