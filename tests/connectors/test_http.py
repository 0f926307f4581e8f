"""The HTTP connector against a real HTTP server serving a feed."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from factsync.connectors.http import HttpConnector


class Feed:
    """Serves ``body`` with an ETag; answers 304, 401, 500 or slowly when told to."""

    def __init__(self) -> None:
        self.body = b"[]"
        self.fail_next = 0
        self.delay = 0.0
        self.seen: list[dict] = []
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                feed.seen.append(dict(self.headers))
                time.sleep(feed.delay)
                etag = f'"{hash(feed.body)}"'
                if self.headers.get("Authorization") != "Bearer feed-token":
                    self.send_response(401)
                elif feed.fail_next:
                    feed.fail_next -= 1
                    self.send_response(500)
                elif self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                else:
                    self.send_response(200)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(feed.body)))
                    self.end_headers()
                    self.wfile.write(feed.body)
                    return
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/facts.json"


@pytest.fixture
def feed():
    feed = Feed()
    yield feed
    feed.server.shutdown()


def connector(feed, ingest, **kw):  # noqa: ANN001, ANN201
    return HttpConnector(name="http:feed", url=feed.url, sink=ingest,
                         headers={"Authorization": "Bearer feed-token"},
                         backoff_seconds=0.01, **kw)


ROWS = [{"subject": "France", "relation": "P36", "object": "Paris"},
        {"subject": "Italy", "relation": "P36"}]


def test_rows_arrive_and_an_unchanged_feed_costs_a_304(feed, store, ingest):
    feed.body = json.dumps({"facts": ROWS}).encode()
    http = connector(feed, ingest)
    report = http.poll()
    assert (report.rows, report.rejected) == (2, 1)
    assert [f.subject for f in store.desired_facts()] == ["France"]
    assert store.quarantined()[0].location == f"{feed.url}#2"
    assert http.poll().rows == 0
    assert feed.seen[-1]["If-None-Match"].startswith('"')
    feed.body = b'{"subject": "Spain", "relation": "P36", "object": "Madrid"}\n'
    assert http.poll().rows == 1


def test_a_flapping_feed_is_retried_and_a_dead_one_is_reported(feed, store, ingest):
    feed.body = json.dumps(ROWS[:1]).encode()
    http = connector(feed, ingest, retries=3)
    feed.fail_next = 2
    assert http.poll().rows == 1 and http.health.up
    feed.fail_next = 3
    report = http.poll()
    assert report.errors == ["http: HTTP Error 500: Internal Server Error"]
    assert not http.health.up and http.health.errors["http"] == 1


def test_timeouts_garbage_and_a_missing_token_are_errors_by_kind(feed, store, ingest):
    http = connector(feed, ingest, retries=1, timeout_seconds=0.2)
    feed.delay = 0.5
    http.poll()
    feed.delay = 0.0
    feed.body = b"<html>not json</html>"
    http.poll()
    unauthorised = HttpConnector(name="http:anon", url=feed.url, sink=ingest, retries=1)
    unauthorised.poll()
    assert http.health.errors == {"timeout": 1, "parse": 1}
    assert unauthorised.health.errors == {"http": 1}
    assert store.desired_facts() == []
