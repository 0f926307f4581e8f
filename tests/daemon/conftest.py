"""Daemon-test fixtures.

- ``daemon_process``: the ``DaemonProcess`` class (a real ``factsync run`` in a
  subprocess); every instance started in a test is killed if still running at its end.
- ``alertmanager``: the base URL of a real Alertmanager (Debian's
  ``prometheus-alertmanager``) on loopback. Skipped where it is not installed, except in
  CI (``CI`` set), where its absence fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request

import pytest

from factsync.bench.live_daemon import DaemonProcess, free_port

ALERTMANAGER_CONFIG = """\
route:
  receiver: "null"
receivers:
  - name: "null"
"""


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


@pytest.fixture
def alertmanager(tmp_path):
    """A running Alertmanager; yields its base URL."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Alertmanager (Debian package prometheus-alertmanager)")
        pytest.skip("Alertmanager is not installed")
    config = tmp_path / "alertmanager.yml"
    config.write_text(ALERTMANAGER_CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "alertmanager.log", "w") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError((tmp_path / "alertmanager.log").read_text()) from None
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=30)
