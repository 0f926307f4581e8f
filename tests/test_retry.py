"""Retries against a real HTTP server: what may pass is retried, the rest raises at once."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from factsync.retry import with_retries


class Scripted(BaseHTTPRequestHandler):
    """Answers each GET with the next status of ``server.statuses``."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
        self.server.seen += 1
        status = self.server.statuses.pop(0)
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok" if status == 200 else b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.seen = 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def fetch(httpd) -> bytes:  # noqa: ANN001
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def test_an_unavailable_server_is_tried_again_until_it_answers(server):
    server.statuses = [503, 429, 200]
    assert with_retries(lambda: fetch(server), attempts=3, backoff_seconds=0.01) == b"ok"
    assert server.seen == 3


@pytest.mark.parametrize("status", [404, 401, 304])
def test_an_answer_that_will_not_change_is_raised_at_once(server, status):
    server.statuses = [status, 200]
    with pytest.raises(urllib.error.HTTPError) as raised:
        with_retries(lambda: fetch(server), attempts=3, backoff_seconds=0.01)
    assert raised.value.code == status and server.seen == 1


def test_a_closed_port_is_retried_and_the_last_error_raised(server):
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    calls = []

    def refused() -> bytes:
        calls.append(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return response.read()

    with pytest.raises(urllib.error.URLError):
        with_retries(refused, attempts=3, backoff_seconds=0.01)
    assert len(calls) == 3


def test_a_bug_is_not_retried():
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        with_retries(broken, attempts=3, backoff_seconds=0.01)
    assert calls == [1]
