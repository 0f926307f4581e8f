"""``HttpConnector``: facts from a JSON or JSONL endpoint, polled with conditional requests.

Each poll sends ``If-None-Match`` / ``If-Modified-Since`` from the previous answer, so
an unchanged feed costs a 304. Requests time out, failures are retried with backoff,
and an optional set of headers carries authentication. The body is a JSON list of rows,
``{"facts": [...]}``, or JSON lines.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from factsync.connectors.base import ConnectorHealth, FactSink, ScanReport, deliver_rows
from factsync.connectors.polling import PollThread
from factsync.retry import with_retries

log = logging.getLogger(__name__)


class NotModified(Exception):
    """The feed has not changed since the last read."""


class HttpConnector:
    """Facts from one URL.

    Args:
        name: source name stamped on its facts.
        url: the feed's URL.
        sink: where rows go.
        headers: extra request headers (e.g. ``Authorization``).
        poll_seconds: interval between polls.
        timeout_seconds: per request.
        retries: attempts per poll before it counts as failed.
    """

    def __init__(
        self, *, name: str, url: str, sink: FactSink, headers: Mapping[str, str] | None = None,
        poll_seconds: float = 60.0, timeout_seconds: float = 10.0, retries: int = 3,
        backoff_seconds: float = 1.0,
    ) -> None:
        self.name = name
        self.url = url
        self.health = ConnectorHealth()
        self._sink = sink
        self._headers = dict(headers or {})
        self._timeout = timeout_seconds
        self._retries = retries
        self._backoff = backoff_seconds
        self._validators: dict[str, str] = {}
        self._poller = PollThread(name, self.poll, poll_seconds)

    def start(self) -> None:
        """Begin polling."""
        self._poller.start()

    def stop(self) -> None:
        """Stop polling."""
        self._poller.stop()

    def scan(self) -> ScanReport:
        """Read the whole feed now, unconditionally."""
        return self._read(conditional=False)

    def poll(self) -> ScanReport:
        """Read the feed if it changed since the last read."""
        return self._read(conditional=True)

    def _read(self, *, conditional: bool) -> ScanReport:
        report = ScanReport()
        try:
            body, content_type = with_retries(lambda: self._fetch(conditional),
                                              attempts=self._retries,
                                              backoff_seconds=self._backoff)
        except NotModified:
            self.health.succeeded()
            return report
        except Exception as exc:
            kind = _kind(exc)
            self.health.failed(kind, f"{self.url}: {exc}")
            report.errors.append(f"{kind}: {exc}")
            log.warning("%s: reading %s failed (%s): %s", self.name, self.url, kind, exc)
            return report
        try:
            rows = _rows(body, content_type)
        except ValueError as exc:
            self.health.failed("parse", str(exc))
            report.errors.append(f"parse: {exc}")
            self._validators.clear()  # read it again next time, it may be fixed
            return report
        deliver_rows(self._sink, ((raw, f"{self.url}#{index}", None) for index, raw in rows),
                     source=self.name, report=report)
        self.health.succeeded()
        return report

    def _fetch(self, conditional: bool) -> tuple[bytes, str]:
        headers = dict(self._headers)
        if conditional and "etag" in self._validators:
            headers["If-None-Match"] = self._validators["etag"]
        if conditional and "last-modified" in self._validators:
            headers["If-Modified-Since"] = self._validators["last-modified"]
        request = urllib.request.Request(self.url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                body = response.read()
                for name in ("etag", "last-modified"):
                    if response.headers.get(name):
                        self._validators[name] = response.headers[name]
                return body, response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                raise NotModified from exc
            raise


def _rows(body: bytes, content_type: str) -> list[tuple[int, Any]]:
    """(position, row) pairs of a JSON list, ``{"facts": [...]}`` or JSON lines."""
    text = body.decode("utf-8")
    if "jsonl" in content_type or "ndjson" in content_type:
        return [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        try:
            return [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), 1)
                    if line.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"body is neither JSON nor JSON lines: {exc}") from exc
    if isinstance(document, dict) and isinstance(document.get("facts"), list):
        document = document["facts"]
    elif isinstance(document, dict) and "subject" in document:
        document = [document]  # JSON lines holding a single row
    if not isinstance(document, list):
        raise ValueError("expected a JSON list of rows or {\"facts\": [...]}")
    return list(enumerate(document, 1))


def _kind(exc: Exception) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)) or "timed out" in str(exc):
        return "timeout"
    if isinstance(exc, urllib.error.HTTPError):
        return "http"
    if isinstance(exc, UnicodeDecodeError):
        return "parse"
    return "connection"
