"""An HTTP fact source that errs, hangs, sends garbage and goes away, feeding a live daemon.

The daemon must stay up, show each failure in ``/status`` and its metrics, and apply
every fact from the reads that worked, once.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.reliability

FRANCE = {"subject": "France", "relation": "P36", "object": "Rome"}
ITALY = {"subject": "Italy", "relation": "P36", "object": "Paris"}


class FlappingFeed:
    """Serves ``rows`` as JSON, or fails the way ``mode`` says: 500, slow, garbage."""

    def __init__(self, port: int = 0) -> None:
        self.rows: list[dict] = [FRANCE]
        self.mode = "ok"
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if feed.mode == "slow":
                    time.sleep(3)  # past the connector's 1 s timeout
                status, body = {
                    "500": (500, b"{\"error\": \"upstream down\"}"),
                    "garbage": (200, b"\xff\xfe<html>not a feed"),
                }.get(feed.mode, (200, json.dumps(feed.rows).encode()))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_source_that_flaps_never_stops_the_daemon_or_loses_a_fact(tmp_path, tiny_daemon):
    feed = FlappingFeed()
    name = "http:feed"
    daemon = tiny_daemon(tmp_path, connectors=[{
        "type": "http", "name": name, "url": f"http://127.0.0.1:{feed.port}/facts.json",
        "poll_seconds": 0.5, "timeout_seconds": 1, "full_scan_seconds": 2}])
    daemon.start()

    def applied() -> list[str]:
        return sorted(f["subject"] for f in daemon.get("/facts?state=applied"))

    def errors(kind: str) -> float:
        return daemon.metric(
            f'factsync_connector_errors_total{{connector="{name}",kind="{kind}"}}') or 0

    up = f'factsync_connector_up{{connector="{name}"}}'
    daemon.wait_for(lambda: applied() == ["France"], 120, "France from the first read")
    try:
        for mode, kind in (("500", "http"), ("slow", "timeout"), ("garbage", "parse"),
                           ("gone", "connection")):
            if mode == "gone":
                feed.close()
            feed.mode = mode
            daemon.wait_for(lambda k=kind: errors(k) > 0, 60, f"a {kind} error to be counted")
            assert daemon.metric(up) == 0
            source = daemon.get("/status")["connectors"][0]
            assert not source["up"] and source["last_error"]
    finally:
        feed.close()
    feed = FlappingFeed(port=feed.port)  # the source comes back, with one more fact
    feed.rows = [FRANCE, ITALY]
    try:
        daemon.wait_for(lambda: applied() == ["France", "Italy"], 120, "Italy after recovery")
        daemon.wait_for(lambda: daemon.metric(up) == 1, 30, "the source to count as up")
    finally:
        feed.close()
    versions = [v for v in daemon.get("/versions") if v["seq"] > 0]
    assert daemon.process.poll() is None and daemon.stop() == 0
    assert sorted(f["subject"] for v in versions for f in v["facts"]) == ["France", "Italy"]
