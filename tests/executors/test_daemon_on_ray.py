"""A daemon configured with ``executor: {type: ray}`` edits through its Ray workers.

The daemon starts its own Ray instance (no address), its two workers load the tiny
model from the configured path, a pushed fact is promoted, and the metrics report the
fleet. The daemon's log shows the workers followed the promoted version.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray")

pytestmark = pytest.mark.ray

FACTS = [{"subject": "France", "relation": "P36", "object": "Rome"},
         {"subject": "Italy", "relation": "P36", "object": "Paris"}]


def test_a_daemon_on_ray_workers_promotes_facts_and_reports_its_fleet(tiny_daemon, tmp_path):
    daemon = tiny_daemon(tmp_path, executor={"type": "ray", "workers": 2,
                                             "cpus_per_worker": 1})
    daemon.start()
    assert daemon.metric("factsync_executor_workers") == 2
    (daemon.facts_dir / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    daemon.wait_for(lambda: (s := daemon.get("/status"))["pending_changes"] == 0
                    and s["running_job"] is None and s["live_version"]["seq"] >= 1,
                    300, "the daemon to apply the facts")

    versions = [v for v in daemon.get("/versions") if v["seq"] > 0]
    assert len(versions) == 1 and versions[0]["live"]
    assert sorted(f["subject"] for f in versions[0]["facts"]) == ["France", "Italy"]
    assert daemon.metric("factsync_executor_workers") == 2
    assert daemon.metric("factsync_executor_busy_workers") == 0
    assert daemon.metric("factsync_executor_worker_failures_total") == 0
    assert daemon.stop() == 0, daemon.log_tail()
