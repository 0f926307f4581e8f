"""Kill -9 during a rollback: after a restart the live version is one whole version."""

from __future__ import annotations

import contextlib
import json
import signal

import pytest

from factsync.store.store import StateStore

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("point", ["monitor.before_rollback", "monitor.rolled_back"])
def test_a_rollback_killed_half_way_leaves_one_consistent_live_version(
    point, tmp_path, tiny_daemon, rebuilt_digest
):
    daemon = tiny_daemon(tmp_path, api={"token": "t"})
    daemon.start()
    for index, (subject, obj) in enumerate([("France", "Rome"), ("Italy", "Paris")], 1):
        (daemon.facts_dir / f"{index}.jsonl").write_text(
            json.dumps({"subject": subject, "relation": "P36", "object": obj}) + "\n")
        daemon.wait_for(lambda i=index: daemon.get("/status")["live_version"]["seq"] == i,
                        120, f"version {index}")
    versions = {v["seq"]: v["id"] for v in daemon.get("/versions")}
    assert daemon.stop() == 0

    daemon.start(env={"FACTSYNC_FAILPOINT": point})
    with contextlib.suppress(OSError):  # the process dies under the request
        daemon.post("/rollback", {}, headers={"Authorization": "Bearer t"})
    assert daemon.process.wait(timeout=60) == -signal.SIGKILL

    daemon.start()
    live = daemon.get("/status")["live_version"]["id"]
    expected = versions[2] if point == "monitor.before_rollback" else versions[1]
    assert live == expected
    weights = daemon.get("/weights")
    assert daemon.stop() == 0
    store = StateStore(tmp_path / "state.sqlite")
    assert store.integrity_problems() == []
    if point == "monitor.rolled_back":
        assert store.version(version_id=versions[2]).status == "rolled_back"
        assert {a.version_id for a in store.applied_facts()} == {versions[1]}
    store.close()
    assert weights == {"version": live, "sha256": rebuilt_digest(tmp_path, live)}
