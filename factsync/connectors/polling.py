"""``PollThread``: calls a connector's incremental read on an interval, or when woken."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PollThread:
    """Runs ``poll`` every ``interval`` seconds (sooner after ``wake``) until stopped."""

    def __init__(self, name: str, poll: Callable[[], None], interval: float) -> None:
        self._poll = poll
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-poll", daemon=True)

    def start(self) -> None:
        """Begin polling."""
        self._thread.start()

    def wake(self) -> None:
        """Poll now."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the poll in progress."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, returning early when stopped."""
        self._stop.wait(seconds)

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was called."""
        return self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._poll()
            except Exception:  # a failed poll is recorded by the connector; keep polling
                log.exception("poll failed; retrying in %.0fs", self._interval)
