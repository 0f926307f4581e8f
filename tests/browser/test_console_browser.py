"""The web console in a real headless Chromium, page JavaScript off, against a live
daemon on a tiny model: every page, a fact followed to the job and the version that
applied it, refused actions, and a rollback through the form.

With ``FACTSYNC_SCREENSHOT=docs/console-versions.png`` the versions page is also saved
there as a PNG (the README shows it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import Select, WebDriverWait

TOKEN = "console-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FACTS = [{"subject": "France", "relation": "capital", "object": "Rome"},
         {"subject": "Italy", "relation": "capital", "object": "Paris"}]
BROKEN_ROW = '{"subject": "Nobody", "relation": "capital"}\n'

pytestmark = pytest.mark.browser


@pytest.fixture
def daemon(tiny_daemon, tmp_path):
    """A live daemon with a token, two versions of one fact each, and a quarantined
    file row."""
    daemon = tiny_daemon(tmp_path, api={"token": TOKEN})
    daemon.start()
    for seq, fact in enumerate(FACTS, 1):
        assert daemon.post("/facts", [fact], headers=AUTH)[0] == 202
        daemon.wait_for(lambda seq=seq: daemon.get("/status")["live_version"]["seq"] == seq,
                        120, f"version {seq}")
    (daemon.facts_dir / "broken.jsonl").write_text(BROKEN_ROW)
    daemon.wait_for(lambda: daemon.get("/quarantine"), 60, "the broken row in quarantine")
    return daemon


def versions_by_seq(daemon) -> dict[int, dict]:  # noqa: ANN001
    return {v["seq"]: v for v in daemon.get("/versions")}


def follow(browser, click) -> None:  # noqa: ANN001
    """Run ``click`` (a link, a form's button, going back) and wait until the page it
    leads to has replaced this one: reading sooner finds the old page's elements.

    Asked about the old page in the middle of the navigation, Chromium may answer with an
    inspector error ("Node with given id does not belong to the document") instead of a
    stale element; the wait asks again rather than failing."""
    page = browser.find_element(By.TAG_NAME, "html")
    click()
    WebDriverWait(browser, 30, ignored_exceptions=(WebDriverException,)).until(
        staleness_of(page))


def heading(browser) -> str:  # noqa: ANN001
    return browser.find_element(By.TAG_NAME, "h1").text


def main_text(browser) -> str:  # noqa: ANN001
    return browser.find_element(By.TAG_NAME, "main").text


def test_every_page_reads_and_a_fact_leads_to_its_job_and_version(browser, daemon):
    versions = versions_by_seq(daemon)
    browser.get(f"http://127.0.0.1:{daemon.api_port}/ui/")
    assert browser.title == "Versions · factsync"
    assert browser.find_element(By.ID, "live-version").text == versions[2]["id"]
    lineage = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "ol.lineage a")]
    assert lineage == [versions[0]["id"], versions[1]["id"], versions[2]["id"]]
    charts = browser.find_elements(By.CSS_SELECTOR, ".charts img")
    assert charts
    for chart in charts:  # drawn by the browser, not only linked
        assert browser.execute_script("return arguments[0].naturalWidth", chart) > 0
    if target := os.environ.get("FACTSYNC_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(target)

    for link, title, shown in [
        ("Jobs", "Jobs", "promoted"),
        ("Quarantine", "Quarantine", "missing field 'object'"),
        ("Alerts & health", "Alerts and health", "No alerts."),
        ("Facts", "Facts", "France"),
    ]:
        follow(browser, browser.find_element(By.LINK_TEXT, link).click)
        assert heading(browser) == title
        assert shown in main_text(browser)
    browser.find_element(By.NAME, "q").send_keys("ital")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "form.filter button").click)
    rows = browser.find_elements(By.CSS_SELECTOR, "#facts-table tbody tr")
    assert [row.find_element(By.TAG_NAME, "td").text for row in rows] == ["Italy"]

    job_id = versions[2]["job_id"]
    follow(browser, rows[0].find_element(By.LINK_TEXT, f"job {job_id}").click)
    assert heading(browser) == f"Job {job_id} promoted"
    stages = [li.find_element(By.TAG_NAME, "strong").text
              for li in browser.find_elements(By.CSS_SELECTOR, "ol.timeline li")]
    assert stages == ["queued", "preparing", "editing", "evaluating", "promoted"]
    assert "Italy" in browser.find_element(By.ID, "facts").text

    follow(browser, browser.back)
    follow(browser, browser.find_element(By.CSS_SELECTOR, "#facts-table tbody tr").find_element(
        By.LINK_TEXT, versions[2]["id"]).click)
    assert heading(browser) == f"Version {versions[2]['id']} (live)"
    applied = browser.find_element(By.CSS_SELECTOR, "table.version-facts").text
    assert "Italy" in applied and "Paris" in applied


def test_a_rollback_through_the_form_needs_the_token_and_moves_the_live_version(
    browser, daemon
):
    versions = versions_by_seq(daemon)
    page = f"http://127.0.0.1:{daemon.api_port}/ui/"
    for token in ("", "not-the-token"):
        browser.get(page)
        form = browser.find_element(By.ID, "rollback-form")
        form.find_element(By.NAME, "token").send_keys(token)
        form.find_element(By.NAME, "confirm").click()
        follow(browser, form.find_element(By.TAG_NAME, "button").click)
        assert heading(browser) == "Not done"
        assert "token is missing or wrong" in main_text(browser)
    assert daemon.get("/status")["live_version"]["id"] == versions[2]["id"]

    browser.get(page)
    form = browser.find_element(By.ID, "rollback-form")
    Select(form.find_element(By.NAME, "to")).select_by_value("")  # the parent
    form.find_element(By.NAME, "token").send_keys(TOKEN)
    form.find_element(By.NAME, "confirm").click()
    follow(browser, form.find_element(By.TAG_NAME, "button").click)
    assert browser.current_url.startswith(f"{page}?done=rollback")
    assert browser.find_element(By.CLASS_NAME, "notice").text == \
        f"Rolled back: version {versions[1]['id']} is live again."
    assert browser.find_element(By.ID, "live-version").text == versions[1]["id"]
    assert daemon.get("/status")["live_version"]["id"] == versions[1]["id"]
    assert "rolled_back" in browser.find_element(By.ID, "all-versions").text
