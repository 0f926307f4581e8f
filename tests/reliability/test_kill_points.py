"""Kill -9 the daemon at each point of a job's life; after a restart nothing is lost.

For every failpoint the daemon is killed there while applying a two-fact file, then
restarted. Afterwards: each fact change is applied exactly once, by exactly one version;
the store passes SQLite's integrity checks; no unrecorded version directory or
half-written export is left; and the served weights hash equal to the live version
rebuilt from the base.
"""

from __future__ import annotations

import json
import signal

import pytest

from factsync.store.store import StateStore

pytestmark = pytest.mark.reliability

KILL_POINTS = [
    "ingest.uncommitted",
    "ingest.recorded",
    "reconcile.job_created",
    "worker.preparing",
    "worker.editing",
    "worker.evaluating",
    "worker.version_written",
    "worker.promoted",
    "export.staged",
]
FACTS = [{"subject": "France", "relation": "P36", "object": "Rome"},
         {"subject": "Italy", "relation": "P36", "object": "Paris"}]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_any_point_loses_nothing_and_applies_nothing_twice(
    point, tmp_path, tiny_daemon, rebuilt_digest
):
    daemon = tiny_daemon(tmp_path)
    daemon.start(env={"FACTSYNC_FAILPOINT": point})
    (daemon.facts_dir / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    assert daemon.process.wait(timeout=120) == -signal.SIGKILL, daemon.log_tail()
    assert f"failpoint {point}: killing the process" in daemon.log_tail()

    daemon.start()
    daemon.wait_for(lambda: (s := daemon.get("/status"))["pending_changes"] == 0
                    and s["running_job"] is None and s["live_version"]["seq"] >= 1,
                    120, "the restarted daemon to apply the facts")
    versions = [v for v in daemon.get("/versions") if v["seq"] > 0]
    weights = daemon.get("/weights")
    assert daemon.stop() == 0

    assert len(versions) == 1 and versions[0]["live"]
    assert sorted(f["subject"] for f in versions[0]["facts"]) == ["France", "Italy"]
    store = StateStore(tmp_path / "state.sqlite")
    assert store.integrity_problems() == []
    applied = store.changes(state="applied")
    assert sorted(c.subject for c in applied) == ["France", "Italy"]
    assert {a.version_id for a in store.applied_facts()} == {versions[0]["id"]}
    store.close()
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == [versions[0]["id"]]
    adapters = tmp_path / "exports" / "adapter"
    assert (adapters / "current").resolve().name == versions[0]["id"]
    assert not [p for p in adapters.iterdir() if p.name.startswith(".staging")]

    assert weights == {"version": versions[0]["id"],
                       "sha256": rebuilt_digest(tmp_path, versions[0]["id"])}
