"""Daemon-test fixtures.

- ``alertmanager``: the base URL of a real Alertmanager (Debian's
  ``prometheus-alertmanager``) on loopback. Skipped where it is not installed, except in
  CI (``CI`` set), where its absence fails the test.
- ``prometheus_server``: a factory that starts a real Prometheus (Debian's
  ``prometheus``) with the shipped scrape config pointed at a target.
- ``http_receiver``: a real HTTP server that keeps every JSON body POSTed to it, as
  ``(path, body)`` pairs in ``.requests`` (``.bodies`` has the bodies); ``.url`` is
  ``http://127.0.0.1:<port>/hook``.
- ``lora_server``: a factory ``start(api)`` of real HTTP servers that take adapters at
  run time the way vLLM or SGLang does (see ``LoraServer``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from factsync.bench.live_daemon import free_port
from factsync.registry.serving import LoraApi

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

ALERTMANAGER_CONFIG = """\
route:
  receiver: "null"
receivers:
  - name: "null"
"""


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


class Receiver:
    """An HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        requests = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                requests.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/hook"

    @property
    def bodies(self) -> list:
        return [body for _, body in self.requests]


class LoraServer:
    """An HTTP server with a serving engine's runtime LoRA endpoints (``LoraApi``).

    It refuses what the engines refuse: a body that is not ``{"lora_name", "lora_path"}``
    (or ``{"lora_name"}`` to unload), a name already loaded, an unknown name to unload, a
    path without a PEFT LoRA adapter, or a rank above ``max_lora_rank``; each with a 400.
    ``loaded`` maps served names to paths; ``calls`` lists ``(action, name)`` in order
    and ``refusals`` the reasons of refused requests.
    """

    def __init__(self, api: LoraApi, max_lora_rank: int = 512) -> None:
        self.loaded: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.refusals: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == api.load_path:
                    problem = server.load(body, max_lora_rank)
                elif self.path == api.unload_path:
                    problem = server.unload(body)
                else:
                    problem = f"no route {self.path}"
                if problem:
                    server.refusals.append(problem)
                payload = json.dumps({"error": problem} if problem else {}).encode()
                self.send_response(400 if problem else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def load(self, body: dict, max_lora_rank: int) -> str | None:
        if set(body) != {"lora_name", "lora_path"}:
            return f"load takes lora_name and lora_path, got {sorted(body)}"
        name, path = body["lora_name"], Path(body["lora_path"])
        if name in self.loaded:
            return f"adapter {name} is already loaded"
        config_file = path / "adapter_config.json"
        if not config_file.is_file() or not (path / "adapter_model.safetensors").is_file():
            return f"no adapter at {path}"
        config = json.loads(config_file.read_text())
        if config.get("peft_type") != "LORA" or config["r"] > max_lora_rank:
            return f"adapter rank {config['r']} is above max_lora_rank {max_lora_rank}"
        self.loaded[name] = str(path)
        self.calls.append(("load", name))
        return None

    def unload(self, body: dict) -> str | None:
        if set(body) != {"lora_name"}:
            return f"unload takes lora_name, got {sorted(body)}"
        if body["lora_name"] not in self.loaded:
            return f"adapter {body['lora_name']} is not loaded"
        del self.loaded[body["lora_name"]]
        self.calls.append(("unload", body["lora_name"]))
        return None


@pytest.fixture
def lora_server():
    """Starts ``LoraServer``s for a ``LoraApi``; shuts them down afterwards."""
    servers: list[LoraServer] = []

    def start(api: LoraApi, max_lora_rank: int = 512) -> LoraServer:
        servers.append(LoraServer(api, max_lora_rank))
        return servers[-1]

    yield start
    for server in servers:
        server.server.shutdown()


@pytest.fixture
def http_receiver():
    """A recording HTTP server (see the module docstring)."""
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def prometheus_server(tmp_path):
    """A factory ``start(target)`` that runs a real Prometheus with the shipped config
    scraping ``target`` (host:port) every second; yields the factory, returns base URLs."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Prometheus (Debian package prometheus)")
        pytest.skip("Prometheus is not installed")
    processes = []

    def start(target: str) -> str:
        shipped = DEPLOY / "prometheus" / "prometheus.yml"
        config = yaml.safe_load(shipped.read_text())
        config["global"]["scrape_interval"] = "1s"
        config["rule_files"] = [str(shipped.parent / name) for name in config["rule_files"]]
        config.pop("alerting")
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [target]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        with open(tmp_path / "prometheus.log", "w") as log:
            processes.append(subprocess.Popen(
                [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)
