"""Daemon-test fixtures.

Fixture ``daemon_process``: the ``DaemonProcess`` class (a real ``factsync run`` in a
subprocess); every instance started in a test is killed if still running at its end.
"""

from __future__ import annotations

import pytest

from factsync.bench.live_daemon import DaemonProcess


@pytest.fixture
def daemon_process():
    """The ``DaemonProcess`` class; processes still running after the test are stopped."""
    started: list[DaemonProcess] = []

    class Tracked(DaemonProcess):
        def start(self, *, ready_timeout: float = 300) -> None:
            started.append(self)
            super().start(ready_timeout=ready_timeout)

    yield Tracked
    for daemon in started:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)
