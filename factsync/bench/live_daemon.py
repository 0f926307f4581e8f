"""``DaemonProcess``: a real ``factsync run`` in a subprocess, driven over its HTTP API.

Used by the daemon benchmarks and the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DaemonProcess:
    """Writes a config into ``directory`` and runs the daemon on it.

    Args:
        directory: holds the config, the daemon's log and the watched ``facts/``; it is
            also the data directory unless ``extra`` sets ``data_dir``.
        policy: the policy as a mapping, written next to the config; ``None`` uses the
            built-in default.
        extra: more config keys.
    """

    def __init__(self, directory: Path, *, policy: dict | None = None, **extra: Any) -> None:
        self.directory = directory
        self.facts_dir = directory / "facts"
        self.facts_dir.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.log_path = directory / "daemon.log"
        self.process: subprocess.Popen | None = None
        config = {
            "data_dir": str(directory),
            "schedules": {"full_scan_seconds": 20, "worker_poll_seconds": 0.5},
            **extra,
        }
        config["api"] = {**extra.get("api", {}), "port": self.api_port}
        config["metrics"] = {**extra.get("metrics", {}), "port": self.metrics_port}
        if policy is not None:
            (directory / "policy.yaml").write_text(yaml.safe_dump(policy))
            config["policy"] = "policy.yaml"
        self.config_path = directory / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self, *, ready_timeout: float = 900, env: dict[str, str] | None = None,
              wait: bool = True) -> None:
        """Start the daemon (with extra ``env``) and wait until ``/readyz`` answers 200:
        ``ready_timeout`` seconds at most, which a first start on a CPU, computing the
        default model's key statistics, takes minutes of."""
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "factsync", "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            )
        if not wait:
            return
        self.wait_for(lambda: self.get("/readyz", ok_only=False)[0] == 200, ready_timeout,
                      "the daemon to become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the process to exit; its exit status."""
        if self.process is None:
            raise RuntimeError("the daemon was not started")
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def get(self, path: str, *, ok_only: bool = True) -> Any:
        """GET ``path`` from the API; the parsed JSON (or (status, JSON) if not ok_only)."""
        return self._call("GET", path, None, ok_only)

    def post(self, path: str, body: Any, headers: dict | None = None) -> tuple[int, Any]:
        """POST JSON to the API; (status, parsed JSON)."""
        return self._call("POST", path, body, False, headers)

    def metrics(self) -> str:
        """The Prometheus exposition text."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def metric(self, line_start: str) -> float | None:
        """The value of the first exposition line starting with ``line_start``."""
        for line in self.metrics().splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait_for(self, condition, timeout: float, what: str) -> Any:  # noqa: ANN001
        """Poll ``condition`` until it is truthy; fail with the log tail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"daemon exited ({self.process.returncode}) waiting for "
                                     f"{what}:\n{self.log_tail()}")
            try:
                value = condition()
            except (urllib.error.URLError, ConnectionError, OSError):
                value = None
            if value:
                return value
            time.sleep(0.3)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the daemon's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _call(self, method: str, path: str, body: Any, ok_only: bool,
              headers: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}", data=data, method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, payload = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, json.loads(exc.read() or b"null")
        if ok_only:
            if status != 200:
                raise RuntimeError(f"{method} {path} answered {status}: {payload}")
            return payload
        return status, payload
