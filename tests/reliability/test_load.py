"""Load: a steady feed of changes through a daemon on the tiny model.

``run_load`` (what ``factsync bench load`` runs) feeds 200 changes over 40 facts in
10 s through rewritten files and API pushes while probing the API. The feed is small
because the tiny model still edits about a fact a second on this CPU. Afterwards every
fact holds the last value fed, every pushed transition was recorded, later changes
superseded earlier ones so fewer facts were edited than changes fed, every probe was
answered, and the daemon's memory stayed bounded. Timings are printed by the benchmark,
never asserted here.
"""

from __future__ import annotations

import pytest

from factsync.bench.load import run_load
from factsync.bench.load_plan import LoadSettings
from factsync.bench.load_report import format_load_report

pytestmark = pytest.mark.reliability

POLICY = {
    "name": "load",
    "batch": {"max_facts": 16, "coalesce_seconds": 5.0},
    "editing": {"max_iterations": 1, "neighbours": False},
    "gates": [],
    "monitor": {"interval_seconds": 3600},
}
SETTINGS = LoadSettings(changes=200, seconds=10, facts=40, drain_seconds=150, every=5)
RSS_LIMIT_MB = 3000
"""Far above a tiny-model daemon's few hundred MB; catches growth per change, not noise."""


def test_a_steady_feed_is_coalesced_and_nothing_is_dropped(tmp_path, tiny_daemon):
    report = run_load(SETTINGS, lambda data_dir: tiny_daemon(data_dir, policy=POLICY),
                      data_dir=tmp_path / "daemon")
    print(format_load_report(report))

    assert report.problems == []
    assert report.drained, report.notes
    assert report.desired_ok == SETTINGS.facts
    assert report.fed["by_file"] > 0 and report.fed["by_api"] > 0
    assert report.recorded + report.file_overwritten == SETTINGS.changes
    assert set(report.final_states) <= {"applied", "already_true"}, report.final_states
    edited = report.jobs["changes_into_jobs"]
    assert SETTINGS.facts <= edited < SETTINGS.changes
    assert report.throughput[-1]["superseded"] > 0
    assert report.jobs["finished"] == report.jobs["created"] > 1
    for row in report.latency:
        assert row.failed == 0, row
        assert row.requests > 0 or row.phase == "drain", row
    assert report.rss_mb["peak"] < RSS_LIMIT_MB
