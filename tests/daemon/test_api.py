"""The HTTP API over a real socket and a real store (no model loaded)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import schemathesis
import yaml
from prometheus_client import CollectorRegistry

from factsync.daemon.api import ApiContext, ApiServer
from factsync.daemon.api_routes import router
from factsync.daemon.ingest import Ingest
from factsync.daemon.metrics import Metrics
from factsync.facts.catalog import RelationCatalog
from factsync.store.store import StateStore

TOKEN = "s3cret"


def store_rollback(store):  # noqa: ANN001, ANN201
    """Rollback as the daemon answers it when no version has a parent to go back to."""

    def rollback(target):  # noqa: ANN001, ANN202
        live = store.live_version()
        if (target or live.parent_id) is None:
            raise ValueError("the live version is the base model; there is nothing before it")
        undone = store.rollback(to_version_id=target, reason="t", requeue=False)
        return {"queued": False, "rolled_back": undone.rolled_back}

    return rollback


@pytest.fixture
def api(tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    woken = []
    ingest = Ingest(store=store, catalog=RelationCatalog.built_in(),
                    metrics=Metrics(CollectorRegistry()), on_change=lambda: woken.append(1))
    server = ApiServer(
        ApiContext(store=store, ingest=ingest, models=lambda: None,
                   status=lambda: {"ready": False, "starting": "loading the model"},
                   wake=lambda: woken.append(1), rollback=store_rollback(store),
                   token=TOKEN, max_body_bytes=2000),
        host="127.0.0.1", port=0,
    )
    server.start()
    yield server, store, woken
    server.stop()
    store.close()


def call(server, method, path, body=None, *, token=None, raw=None):  # noqa: ANN001, ANN201
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{server.address[1]}{path}", data=data,
                                     method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


ROWS = [
    {"subject": "France", "relation": "capital", "object": "Paris"},
    {"subject": "Italy", "relation": "P36"},
    {"subject": "Spain", "relation": "mascot", "object": "Bull"},
]


def test_health_is_ok_while_readiness_waits_for_the_model(api):
    server, _, _ = api
    assert call(server, "GET", "/healthz") == (200, {"status": "ok"})
    assert call(server, "GET", "/readyz") == (503, {"ready": False,
                                                    "reason": "loading the model"})
    assert call(server, "POST", "/generate", {"prompt": "Hi", "max_new_tokens": 2})[0] == 503


def test_rollback_needs_the_token(api):
    server, _, _ = api
    assert call(server, "POST", "/rollback", {})[0] == 401


def test_pushing_facts_needs_the_token_and_reports_each_bad_row(api):
    server, store, woken = api
    assert call(server, "POST", "/facts", ROWS)[0] == 401
    assert call(server, "POST", "/facts", ROWS, token="wrong")[0] == 401
    status, result = call(server, "POST", "/facts", {"facts": ROWS}, token=TOKEN)
    assert status == 202
    assert (result["accepted"], result["changed"]) == (1, 1)
    assert [q["index"] for q in result["quarantined"]] == [1, 2]
    assert "missing field 'object'" in result["quarantined"][0]["reason"]
    assert "unknown relation 'mascot'" in result["quarantined"][1]["reason"]
    assert woken == [1]
    facts = call(server, "GET", "/facts?subject=France")[1]
    assert [(f["relation"], f["state"]) for f in facts] == [("P36", "pending")]
    assert len(call(server, "GET", "/quarantine")[1]) == 2


def test_rows_of_one_push_that_give_one_id_two_facts_are_all_refused(api):
    server, store, _ = api
    rows = [{"id": "r1", "subject": "France", "relation": "P36", "object": "Paris"},
            {"id": "r2", "subject": "Italy", "relation": "P36", "object": "Rome"},
            {"id": "r1", "subject": "France", "relation": "P36", "object": "Lyon"},
            {"id": "r2", "subject": "Italy", "relation": "P36", "object": "Rome"}]
    status, result = call(server, "POST", "/facts", rows, token=TOKEN)
    assert status == 202 and result["accepted"] == 2  # r2 twice, the same fact
    assert result["quarantined"] == [
        {"index": 0, "reason": f"id 'r1' names a different fact at {result['batch']}:2; an id "
                               "must name one fact, so none of these rows is used"},
        {"index": 2, "reason": f"id 'r1' names a different fact at {result['batch']}:0; an id "
                               "must name one fact, so none of these rows is used"},
    ]
    assert [f.subject for f in store.desired_facts()] == ["Italy"]


def test_the_token_never_reaches_the_log(api, caplog):
    server, _, _ = api
    caplog.set_level("DEBUG")
    call(server, "POST", "/facts", ROWS, token=TOKEN)
    call(server, "POST", "/facts", ROWS, token=TOKEN + "x")
    call(server, "POST", "/rollback", [], token=TOKEN)
    assert caplog.records  # requests were logged, at DEBUG
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({}, json.dumps({"facts": ROWS}).encode(), 401),  # answered before the body is read
    ({"Authorization": f"Bearer {TOKEN}"}, b"x" * 50_000, 413),
])
def test_an_answer_given_before_the_body_is_read_keeps_the_connection(api, headers, body,
                                                                      status):
    """Its body is read and dropped: the next request goes on the same connection, and
    no unread byte makes the server's close reset the connection under the answer."""
    server, _, _ = api
    connection = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
    try:
        connection.request("POST", "/facts", body=body, headers=headers)
        first = connection.getresponse()
        assert first.status == status, first.read()
        assert first.getheader("connection") != "close"
        first.read()
        socket_before = connection.sock
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        assert connection.sock is socket_before
    finally:
        connection.close()


def test_versions_list_the_base_as_live(api):
    server, _, _ = api
    status, versions = call(server, "GET", "/versions")
    assert status == 200 and [(v["id"], v["live"]) for v in versions] == [("base", True)]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("GET", "/nothing", None, 404, "no such endpoint"),
        ("POST", "/versions", b"{}", 405, "not allowed"),
        ("GET", "/jobs/7", None, 404, "no job 7"),
        ("GET", "/jobs/x", None, 400, "job id must be an integer"),
        ("POST", "/facts", b"{bad", 400, "not valid JSON"),
        ("POST", "/facts", b'{"rows": 1}', 400, "expected a JSON list"),
        ("POST", "/facts", b"[" + b"1," * 1500 + b"1]", 413, "over the 2000 limit"),
        ("POST", "/generate", b'{"prompt": "Hi", "max_new_tokens": 0}', 400, "max_new_tokens"),
        ("POST", "/generate", b'{"text": "Hi"}', 400, "expected {\"prompt\""),
        ("POST", "/facts/retry", b'{"subject": "X", "relation": "P36"}', 404,
         "no desired fact"),
        ("POST", "/facts/revert", b'{"subject": "X", "relation": "P36"}', 404,
         "no edited fact 'X' P36 to revert"),
        ("POST", "/facts/other", b'{"subject": "X", "relation": "P36"}', 404,
         "no such endpoint"),
        ("POST", "/rollback", b"{}", 409, "nothing before it"),
        ("POST", "/rollback", b'{"to": "base"}', 409, "already live"),
        ("POST", "/rollback", b'{"to": 3}', 400, "expected {}"),
        ("GET", "/jobs/99999999999999999999", None, 400, "job id must be an integer in 1.."),
        ("GET", "/jobs?limit=-1", None, 400, "limit must be an integer in 1..1000, got -1"),
        ("GET", "/quarantine?limit=1" + "0" * 30, None, 400, "limit must be an integer in"),
        ("GET", "/versions/%C3%A9t%C3%A9%2Fx", None, 404, "no version été/x"),
        ("POST", "/facts/retry", b'{"subject": "\\ud800", "relation": "P36"}', 400,
         "lone surrogate"),
        ("POST", "/facts", b"[" * 40 + b"]" * 40, 400, "nested more than 32 levels"),
        ("POST", "/generate", b'{"prompt": "Hi", "max_new_tokens": NaN}', 400,
         "NaN is not a JSON number"),
        ("POST", "/generate", b'{"prompt": "' + b"x" * 1001 + b'"}', 400, "more than 1000"),
        ("PUT", "/facts", b"[]", 501, "Unsupported method ('PUT')"),
    ],
)
def test_bad_requests_get_a_clear_error(api, method, path, body, status, error):
    server, _, _ = api
    code, payload = call(server, method, path, raw=body, token=TOKEN)
    assert code == status and error in payload["error"]


def test_the_cli_reaches_the_api_with_the_configured_token(api, tmp_path):
    server, _, _ = api
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path),
                                      "api": {"port": server.address[1], "token": TOKEN}}))
    result = subprocess.run(
        [sys.executable, "-m", "factsync", "revert-fact", "France", "capital",
         "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "the daemon refused: no edited fact 'France' P36 to revert" in result.stderr


def test_the_openapi_document_describes_exactly_the_routes(api):
    server, _, _ = api
    status, document = call(server, "GET", "/openapi.json")
    assert status == 200
    schemathesis.openapi.from_dict(document).validate()  # against the OpenAPI 3.1 schema
    described = {(method.upper(), path): "security" in operation
                 for path, operations in document["paths"].items()
                 for method, operation in operations.items()}
    served = {(method, route.path_format) for route in router.routes for method in route.methods}
    assert set(described) == served
    assert {key for key, secured in described.items() if secured} == {
        ("POST", "/facts"), ("POST", "/facts/retry"), ("POST", "/facts/revert"),
        ("POST", "/rollback")}


@pytest.mark.parametrize(
    ("breakage", "repair", "reason"),
    [
        ("PRAGMA query_only = ON", "PRAGMA query_only = OFF",
         "attempt to write a readonly database"),
        # No more pages than the file has now: the next insert finds the disk full.
        ("PRAGMA max_page_count = {pages}", "PRAGMA max_page_count = 1000000",
         "database or disk is full"),
    ],
)
def test_a_store_that_cannot_write_answers_503_and_recovers(api, caplog, breakage, repair,
                                                            reason):
    server, store, _ = api
    rows = [{"subject": f"S{i}", "relation": "mascot", "object": "x" * 300} for i in range(4)]
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(breakage.format(pages=pages))
    caplog.set_level("ERROR", logger="factsync.daemon.api")
    for _ in range(50):  # each push quarantines four rows: a few fill the last free pages
        status, payload = call(server, "POST", "/facts", rows, token=TOKEN)
        if status != 202:
            break
    assert (status, payload) == (503, {"error": f"the state store cannot write right now "
                                                f"({reason}); retry later"})
    assert [(r.levelname, r.exc_info) for r in caplog.records] == [("ERROR", None)]
    assert reason in caplog.records[0].getMessage()
    store._db.execute(repair)
    assert call(server, "POST", "/facts", rows, token=TOKEN)[0] == 202
    assert call(server, "GET", "/quarantine?limit=1")[0] == 200
