"""The web console's router on a real store: every page, the charts, and the actions
with their token and confirmation (no model loaded)."""

from __future__ import annotations

import sqlite3
import urllib.request
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from factsync.daemon.api import ApiContext, ApiServer
from factsync.daemon.console import charts, console_router
from factsync.facts.records import FactRecord
from factsync.kpis.report import FactScore, GateResult, KpiReport, KpiValues, Metric
from factsync.store.records import JOB_EDITING, JOB_EVALUATING, JOB_PREPARING, JOB_REJECTED
from factsync.store.store import StateStore

TOKEN = "s3cret"
HOSTILE = "<script>alert('x')</script>"


def report(change_id: int, *, efficacy: float, passed: bool = True) -> dict:
    """A KPI report as the job pipeline stores it, for one fact."""
    values = KpiValues({Metric.EFFICACY_ACCURACY: efficacy, Metric.PERPLEXITY_RATIO: 1.02})
    live = KpiValues({Metric.EFFICACY_ACCURACY: 0.0, Metric.PERPLEXITY_RATIO: 1.0})
    score = FactScore(change_id=change_id, relation="P36", prompt="The capital is",
                      new_object="x", old_object="y", probability=0.75,
                      values=KpiValues({Metric.EFFICACY_ACCURACY: efficacy}))
    gate = GateResult("efficacy_accuracy >= 0.9", Metric.EFFICACY_ACCURACY, None, efficacy,
                      0.0, passed, False)
    return KpiReport(candidate=values, live=live, by_relation={}, facts=(score,),
                     ime_iterations=2, edit_seconds=3.5, gates=(gate,)).to_dict()


def record(subject: str, obj: str, location: str = "capitals.jsonl:1") -> FactRecord:
    return FactRecord(subject=subject, relation="capital", object=obj, source="file:facts",
                      location=location)


def promote(store: StateStore, clock, subject: str, obj: str, old: str, version_id: str,
            parent_id: str, efficacy: float) -> int:  # noqa: ANN001
    """Carry one fact through a job to a promoted version; the job id."""
    change = store.record_desired(record=record(subject, obj), relation="P36")
    job = store.create_job(change_ids=[change.id], policy_digest="p1")
    for state in (JOB_PREPARING, JOB_EDITING, JOB_EVALUATING):
        clock.now += 2
        store.transition(job_id=job.id, state=state, reason=f"{state} 1 fact")
    clock.now += 1
    store.promote(job_id=job.id, version_id=version_id, parent_id=parent_id,
                  policy_digest="p1", report=report(change.id, efficacy=efficacy),
                  applied={change.id: old}, left_out={})
    return job.id


@pytest.fixture
def state(tmp_path, clock):
    """A store with two promoted versions (v1 folded), a rejected job, a failed fact and
    quarantined rows."""
    store = StateStore(tmp_path / "state.sqlite", clock=clock)
    promote(store, clock, "France", "Lyon", "Paris", "v1", "base", efficacy=1.0)
    promote(store, clock, "Italy", "Milan", "Rome", "v2", "v1", efficacy=0.5)
    store.record_fold(version_id="v1", checkpoint="/data/folds/v1", reason="rank limit")
    failed = store.record_desired(record=record("Spain", "Porto"), relation="P36")
    job = store.create_job(change_ids=[failed.id], policy_digest="p1")
    store.finish_job(job_id=job.id, state=JOB_REJECTED, reason="gates failed",
                     change_states={failed.id: ("failed", "edit did not take")},
                     report=report(failed.id, efficacy=0.0, passed=False))
    store.record_desired(record=record(HOSTILE, "Oslo"), relation="P36")
    store.quarantine(source="file:facts", location="people.jsonl:4",
                     reason="missing field 'object'", raw='{"subject": "Nobody"}')
    store.quarantine(source="http:kb", location="https://kb.example/facts.json#3",
                     reason="unknown relation 'P999'", raw="{}")
    yield store
    store.close()


def store_rollback(store: StateStore):  # noqa: ANN201
    """Rollback as the daemon answers it, without a worker thread."""

    def rollback(target: str | None) -> dict:
        live = store.live_version()
        target = target or live.parent_id
        if target is None:
            raise ValueError("the live version is the base model; there is nothing before it")
        undone = store.rollback(to_version_id=target, reason="operator", requeue=False)
        return {"queued": False, "to": target, "rolled_back": undone.rolled_back}

    return rollback


class Console:
    """A console app on ``state`` and what its actions did."""

    def __init__(self, store: StateStore, *, token: str | None = TOKEN, rollback=None) -> None:  # noqa: ANN001
        self.woken = 0
        self.store = store
        self.context = ApiContext(
            store=store, ingest=None, models=lambda: None, status=self.status,
            wake=self.wake, rollback=rollback or store_rollback(store), token=token,
            max_body_bytes=10_000,
        )
        app = FastAPI()
        app.include_router(console_router(self.context))
        self.client = TestClient(app, follow_redirects=False)

    def wake(self) -> None:
        self.woken += 1

    def status(self) -> dict:
        live = self.store.live_version()
        return {
            "ready": True, "starting": "", "live_version": {"id": live.id, "seq": live.seq},
            "alerts": [{"name": "FactsyncExportFailed", "key": "v2",
                        "summary": "export of v2 failed: disk full"}],
            "pending_changes": self.store.count_changes(states=("pending", "queued")),
            "jobs": self.store.count_jobs(), "quarantined": self.store.quarantine_count(),
            "connectors": [
                {"name": "file:facts", "up": True, "last_success": 1000.0, "last_error": None},
                {"name": "http:kb", "up": False, "last_success": None,
                 "last_error": "timed out after 10 s"},
            ],
        }

    def get(self, path: str) -> str:
        response = self.client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("text/html")
        return response.text


@pytest.fixture
def console(state):
    return Console(state)


class Links(HTMLParser):
    """The console links (``href``, ``src``) and form actions of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.forms: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.scripts += tag == "script"
        for name in ("href", "src"):
            if (values.get(name) or "").startswith("/ui/"):
                self.links.append(values[name].split("#")[0])
        if tag == "form" and values.get("method") == "post":
            self.forms.append(values["action"])


@pytest.mark.parametrize(("path", "expected"), [
    ("/ui/", ["v2", "(live)", "Lineage", "rank limit", "efficacy_accuracy &gt;= 0.9"]),
    ("/ui/versions/v1", ["Version v1", "Lyon", "Paris", "/data/folds/v1",
                         "Roll back to this version"]),
    ("/ui/jobs", ["job 1", "promoted", "rejected", "0 of 1 passed"]),
    ("/ui/jobs?state=rejected", ["job 3", "in state rejected"]),
    ("/ui/jobs/3", ["rejected", "efficacy_accuracy &gt;= 0.9", "edit did not take"]),
    ("/ui/facts", ["France", "Spain", "edit did not take"]),
    ("/ui/fact?subject=France&relation=P36", ["Lyon", "Retry", "job 1",
                                               "Yes, revert Lyon to Paris"]),
    ("/ui/quarantine", ["people.jsonl", "missing field &#39;object&#39;", "kb.example"]),
    ("/ui/health", ["FactsyncExportFailed", "disk full", "timed out after 10 s", "down"]),
])
def test_every_page_renders_from_the_store(console, path, expected):
    html = console.get(path)
    for text in expected:
        assert text in html, text


def test_every_link_on_every_page_answers_and_no_page_needs_a_script(console):
    seen, queue = set(), ["/ui/"]
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        response = console.client.get(path)
        assert response.status_code == 200, path
        if response.headers["content-type"].startswith("text/html"):
            parser = Links()
            parser.feed(response.text)
            assert parser.scripts == 0, path
            queue += parser.links
    assert {"/ui/jobs/1", "/ui/versions/v1", "/ui/quarantine", "/ui/health",
            "/ui/static/console.css", "/ui/charts/efficacy_accuracy.svg"} <= seen


def test_the_versions_page_shows_the_live_lineage_and_charts_only_measured_kpis(console):
    html = console.get("/ui/")
    lineage = html[html.index('class="lineage"'):html.index("</ol>")]
    assert [lineage.index(v) < lineage.index(w) for v, w in [("base", "v1"), ("v1", "v2")]] \
        == [True, True]
    assert "/ui/charts/efficacy_accuracy.svg" in html
    assert "/ui/charts/perplexity_ratio.svg" in html
    assert "/ui/charts/retention.svg" not in html
    assert '<option value="">the parent, v1 (seq 1)</option>' in html
    assert '<option value="base">' in html


def test_a_kpi_chart_is_svg_with_a_point_per_measured_version(console):
    response = console.client.get("/ui/charts/efficacy_accuracy.svg")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(response.content)
    assert root.tag.endswith("svg")
    # Each kind of version shown (v1 promoted, v2 live) has a group of markers in the
    # plot and one in the legend.
    groups = [e for e in root.iter() if e.get("id", "").startswith("PathCollection")]
    assert len(groups) == 2 * 2
    assert console.client.get("/ui/charts/nonsense.svg").status_code == 404


def test_a_chart_is_drawn_again_only_when_the_versions_or_the_live_one_change(
    state, monkeypatch
):
    drawn = []
    monkeypatch.setattr(charts, "kpi_chart",
                        lambda versions, metric, live_id: drawn.append(live_id) or b"<svg/>")
    cache = charts.ChartCache()
    for _ in range(2):
        cache.chart(state.versions(), Metric.RETENTION, live_id="v2")
    state.rollback(to_version_id="v1", reason="t", requeue=False)  # v2's status changes
    cache.chart(state.versions(), Metric.RETENTION, live_id="v2")
    cache.chart(state.versions(), Metric.RETENTION, live_id="v1")
    cache.chart(state.versions(), Metric.PERPLEXITY_RATIO, live_id="v1")
    assert drawn == ["v2", "v2", "v1", "v1"]


def test_a_job_page_shows_its_stage_timeline_gates_and_fact_outcomes(console):
    html = console.get("/ui/jobs/1")
    timeline = html[html.index('class="timeline"'):]
    positions = [timeline.index(f"<strong>{s}</strong>")
                 for s in ("queued", "preparing", "editing", "evaluating", "promoted")]
    assert positions == sorted(positions)
    assert "(+2.0 s)" in timeline
    assert "efficacy_accuracy &gt;= 0.9" in html and "passed" in html
    facts = html[html.index('id="facts"'):]
    assert "France" in facts and "applied" in facts and "0.750" in facts
    assert "2 IME pass(es) in 3.5 s" in html


@pytest.mark.parametrize(("query", "subjects"), [
    ("q=fran", ["France"]),
    ("q=ITA", ["Italy"]),
    ("state=failed", ["Spain"]),
    ("state=applied", ["France", "Italy"]),
    ("q=an&state=applied", ["France"]),
    ("q=nobody", []),
])
def test_facts_are_found_by_subject_substring_and_state(console, query, subjects):
    html = console.get(f"/ui/facts?{query}")
    shown = [s for s in ("France", "Italy", "Spain", "&lt;script&gt;") if f">{s}" in html]
    assert shown == subjects


def test_a_fact_links_to_the_job_and_the_version_that_applied_it(console):
    html = console.get("/ui/facts?q=Italy")
    row = html[html.index("Italy"):]
    assert 'href="/ui/versions/v2"' in row and 'href="/ui/jobs/2"' in row
    fact = console.get("/ui/fact?subject=Italy&relation=P36")
    applied = fact[fact.index('id="applied-by"'):]
    assert 'href="/ui/versions/v2"' in applied and 'href="/ui/jobs/2"' in applied


def test_quarantine_shows_the_file_the_line_and_the_reason(console):
    html = console.get("/ui/quarantine")
    assert "<td>people.jsonl</td><td class=\"num\">4</td>" in html
    assert "<td>https://kb.example/facts.json</td><td class=\"num\">3</td>" in html


def test_everything_from_the_store_is_escaped(console):
    for path in ("/ui/facts", "/ui/fact?subject=%3Cscript%3Ealert('x')%3C/script%3E"
                              "&relation=P36"):
        html = console.get(path)
        assert HOSTILE not in html
        assert "&lt;script&gt;" in html


def test_a_rollback_with_the_token_and_confirmation_moves_live_then_redirects(console):
    response = console.client.post("/ui/actions/rollback",
                                   data={"to": "", "token": TOKEN, "confirm": "yes"})
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/ui/" and parse_qs(location.query) == {"done": ["rollback"],
                                                                    "to": ["v1"]}
    assert console.store.live_version().id == "v1"
    html = console.get(response.headers["location"])
    assert "Rolled back: version v1 is live again." in html
    assert console.store.version(version_id="v2").status == "rolled_back"


def test_a_rollback_can_go_to_a_chosen_ancestor(console):
    response = console.client.post("/ui/actions/rollback",
                                   data={"to": "base", "token": TOKEN, "confirm": "yes"})
    assert response.status_code == 303
    assert console.store.live_version().id == "base"
    assert "nothing to roll back to" in console.get("/ui/")


@pytest.mark.parametrize(("form", "status", "message"), [
    ({"confirm": "yes"}, 403, "token is missing or wrong"),
    ({"token": "guess", "confirm": "yes"}, 403, "token is missing or wrong"),
    ({"token": TOKEN}, 400, "confirmation box was not ticked"),
    ({"token": TOKEN, "confirm": "yes", "to": "nope"}, 409,
     "version nope is not an ancestor of the live version"),
    ({"token": TOKEN, "confirm": "yes", "to": "v2"}, 409, "version v2 is already live"),
])
def test_a_refused_rollback_says_why_and_changes_nothing(console, form, status, message):
    response = console.client.post("/ui/actions/rollback", data=form)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert message in response.text and "Not done" in response.text
    assert console.store.live_version().id == "v2"


@pytest.mark.parametrize(("body", "headers", "status", "message"), [
    ({"token": TOKEN, "confirm": "yes", "to": "x" * 20_000}, {}, 413,
     "over the 10000 byte limit"),
    ({f"field{i}": "" for i in range(40)}, {}, 400, "The form cannot be read"),
    (f'{{"token": "{TOKEN}", "confirm": "yes"}}'.encode(),
     {"content-type": "application/json"}, 403, "token is missing or wrong"),
])
def test_a_form_too_big_or_not_a_form_is_refused_before_anything_is_done(
    console, body, headers, status, message
):
    if isinstance(body, bytes):
        response = console.client.post("/ui/actions/rollback", content=body, headers=headers)
    else:
        response = console.client.post("/ui/actions/rollback", data=body, headers=headers)
    assert response.status_code == status and message in response.text
    assert console.store.live_version().id == "v2"


def test_a_rollback_while_the_daemon_starts_is_unavailable(state):
    def starting(target: str | None) -> dict:
        raise RuntimeError("the daemon is still starting")

    console = Console(state, rollback=starting)
    response = console.client.post("/ui/actions/rollback",
                                   data={"token": TOKEN, "confirm": "yes"})
    assert response.status_code == 503 and "the daemon is still starting" in response.text


def test_reverting_a_fact_queues_its_old_object_and_wakes_the_worker(console):
    response = console.client.post("/ui/actions/revert", data={
        "subject": "France", "relation": "P36", "token": TOKEN, "confirm": "yes"})
    assert response.status_code == 303
    assert response.headers["location"] == \
        "/ui/fact?subject=France&relation=P36&done=revert"
    pending = console.store.changes(state="pending", subject="France")
    assert [c.object for c in pending] == ["Paris"] and console.woken == 1
    assert "Revert queued" in console.get(response.headers["location"])


def test_retrying_a_failed_fact_queues_it_again(console):
    response = console.client.post("/ui/actions/retry", data={
        "subject": "Spain", "relation": "P36", "token": TOKEN, "confirm": "yes"})
    assert response.status_code == 303
    assert [c.object for c in console.store.changes(state="pending", subject="Spain")] == \
        ["Porto"]
    assert console.woken == 1


@pytest.mark.parametrize(("action", "subject", "status", "message"), [
    ("revert", "Spain", 404, "no edited fact"),
    ("retry", "Atlantis", 404, "No desired fact"),
    ("retry", "", 400, "Both a subject and a relation"),
])
def test_a_fact_action_on_the_wrong_fact_is_refused(console, action, subject, status,
                                                    message):
    response = console.client.post(f"/ui/actions/{action}", data={
        "subject": subject, "relation": "P36", "token": TOKEN, "confirm": "yes"})
    assert response.status_code == status and message in response.text
    assert console.woken == 0


def test_a_store_that_cannot_write_answers_503(console, monkeypatch):
    def locked(**fields: str) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(console.store, "retry", locked)
    response = console.client.post("/ui/actions/retry", data={
        "subject": "Spain", "relation": "P36", "token": TOKEN, "confirm": "yes"})
    assert response.status_code == 503 and "database is locked" in response.text


def test_without_a_configured_token_actions_need_only_the_confirmation(state):
    console = Console(state, token=None)
    assert 'name="token"' not in console.get("/ui/")
    response = console.client.post("/ui/actions/rollback", data={"confirm": "yes"})
    assert response.status_code == 303 and state.live_version().id == "v1"


def test_only_a_fact_an_edit_applied_offers_a_revert(console):
    assert 'id="revert-form"' in console.get("/ui/fact?subject=France&relation=P36")
    assert 'id="revert-form"' not in console.get("/ui/fact?subject=Spain&relation=P36")


def test_action_forms_carry_a_token_field_and_a_required_confirmation(console):
    for path in ("/ui/", "/ui/versions/v1", "/ui/fact?subject=France&relation=P36"):
        html = console.get(path)
        parser = Links()
        parser.feed(html)
        assert parser.forms, path
        assert html.count('name="token"') == len(parser.forms)
        assert html.count('name="confirm" value="yes" required') == len(parser.forms)


@pytest.mark.parametrize("path", ["/ui/versions/nope", "/ui/jobs/99", "/ui/jobs/x",
                                  f"/ui/jobs/{2**64}", "/ui/fact?subject=A&relation=P36",
                                  "/ui/no-such-page"])
def test_what_does_not_exist_is_a_404_page(console, path):
    response = console.client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Not found" in response.text


def test_the_api_server_serves_the_console_beside_the_json_api(state):
    console = Console(state)
    server = ApiServer(console.context, host="127.0.0.1", port=0)
    server.start()
    base = f"http://127.0.0.1:{server.address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/ui/", timeout=10) as response:
            assert response.headers["content-type"].startswith("text/html")
            assert "Lineage" in response.read().decode()
        form = urlencode({"token": TOKEN, "confirm": "yes"}).encode()
        with urllib.request.urlopen(f"{base}/ui/actions/rollback", data=form,
                                    timeout=10) as response:  # follows the 303
            assert urlsplit(response.url).path == "/ui/"
            assert "Rolled back: version v1 is live again." in response.read().decode()
        with urllib.request.urlopen(f"{base}/versions", timeout=10) as response:
            assert response.headers["content-type"] == "application/json"
    finally:
        server.stop()
    assert state.live_version().id == "v1"
