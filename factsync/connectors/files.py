"""``FileConnector``: a watched directory of .jsonl, .csv and .yaml fact files.

File-system events (inotify, or a polling observer where inotify does not work) are
debounced per file, so an editor's write-then-rename or a burst of writes is read once
after it settles. The daemon also calls ``scan`` on a schedule, so a missed event is
never a missed fact. A file that disappears is not a deletion of its facts.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from factsync.connectors.base import ConnectorHealth, FactSink, ScanReport, deliver_rows
from factsync.connectors.file_rows import SUFFIXES, read_rows

log = logging.getLogger(__name__)


class FileConnector:
    """Facts from the files of one directory (and its subdirectories).

    Args:
        name: the source name stamped on its facts, e.g. ``"file:facts"``.
        directory: the directory to read; created if missing.
        sink: where rows go.
        debounce_seconds: quiet time after a file's last event before it is read.
        polling: use a polling observer instead of the platform's native one.
    """

    def __init__(
        self,
        *,
        name: str,
        directory: Path,
        sink: FactSink,
        debounce_seconds: float = 0.5,
        polling: bool = False,
    ) -> None:
        self.name = name
        self.directory = directory.absolute()
        self._root = directory.resolve()
        self._sink = sink
        self._debounce = debounce_seconds
        self._polling = polling
        self._scan_lock = threading.Lock()
        self._dirty: dict[Path, float] = {}
        self._dirty_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._observer = None
        self._flusher: threading.Thread | None = None
        self.health = ConnectorHealth()

    def start(self) -> None:
        """Watch the directory (made if missing); changed files are read after
        ``debounce_seconds``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        observer = PollingObserver(timeout=1) if self._polling else Observer()
        observer.schedule(_Events(self), str(self.directory), recursive=True)
        observer.start()
        self._observer = observer
        self._flusher = threading.Thread(target=self._flush_loop, name=f"{self.name}-debounce",
                                         daemon=True)
        self._flusher.start()
        log.info("watching %s for fact files (%s observer)", self.directory,
                 "polling" if self._polling else "native")

    def stop(self) -> None:
        """Stop watching and wait for a read in progress to finish."""
        self._stopping.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
        if self._flusher is not None:
            self._flusher.join(timeout=10)

    def scan(self) -> ScanReport:
        """Read every fact file now (the directory is made if missing)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        report = ScanReport()
        for path in sorted(self.directory.rglob("*")):
            if self._wanted(path):
                self._read_file(path, report)
        if not report.errors:
            self.health.succeeded()
        return report

    def read(self, path: Path) -> ScanReport:
        """Read one file now (it must lie inside the directory)."""
        report = ScanReport()
        if self._wanted(path):
            self._read_file(path, report)
        return report

    def touched(self, path: Path) -> None:
        """Note an event on ``path``; it is read once events stop for the debounce time."""
        if not self._wanted(path):
            return
        with self._dirty_lock:
            self._dirty[path] = time.monotonic()
        self._wake.set()

    def _wanted(self, path: Path) -> bool:
        if path.suffix.lower() not in SUFFIXES or path.name.startswith((".", "~", "#")):
            return False
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        if not resolved.is_file():
            return False
        if not resolved.is_relative_to(self._root):
            log.warning("ignoring %s: it resolves to %s, outside %s", path, resolved, self._root)
            return False
        return True

    def _read_file(self, path: Path, report: ScanReport) -> None:
        relative = path.relative_to(self.directory).as_posix()
        with self._scan_lock:
            try:
                rows = list(read_rows(path))
            except OSError as exc:
                report.errors.append(f"{relative}: {exc}")
                self.health.failed("read", report.errors[-1])
                log.warning("cannot read %s: %s", path, exc)
                return
            deliver_rows(self._sink, ((raw, f"{relative}:{line}", problem)
                                      for line, raw, problem in rows),
                         source=self.name, report=report)

    def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=self._debounce)
            self._wake.clear()
            now = time.monotonic()
            with self._dirty_lock:
                ready = [p for p, at in self._dirty.items() if now - at >= self._debounce]
                for path in ready:
                    del self._dirty[path]
            for path in ready:
                if self._stopping.is_set():
                    return
                try:
                    report = self.read(path)
                except Exception:  # a sink failure must not kill the watcher
                    log.exception("reading %s failed; the next full scan retries it", path)
                    continue
                log.info("read %s: %d row(s), %d quarantined", path.name, report.rows,
                         report.rejected)


class _Events(FileSystemEventHandler):
    """Turns watchdog events into ``FileConnector.touched`` calls."""

    def __init__(self, connector: FileConnector) -> None:
        self._connector = connector

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("deleted", "opened", "closed_no_write"):
            return
        target = getattr(event, "dest_path", "") or event.src_path
        self._connector.touched(Path(str(target)))

