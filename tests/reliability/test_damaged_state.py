"""Damaged files in the data directory never become a wrong live model."""

from __future__ import annotations

import json

import pytest

from factsync.store.store import StateStore

pytestmark = pytest.mark.reliability


def test_a_truncated_live_delta_stops_start_up_with_a_clear_error(tmp_path, tiny_daemon):
    daemon = tiny_daemon(tmp_path)
    daemon.start()
    (daemon.facts_dir / "facts.jsonl").write_text(
        json.dumps({"subject": "France", "relation": "P36", "object": "Rome"}) + "\n")
    live = daemon.wait_for(lambda: [v for v in daemon.get("/versions") if v["seq"] == 1],
                           120, "a promoted version")[0]
    assert daemon.stop() == 0
    delta = tmp_path / "versions" / live["id"] / "delta.safetensors"
    delta.write_bytes(delta.read_bytes()[:100])

    daemon.start(wait=False)
    assert daemon.process.wait(timeout=120) == 1
    log = daemon.log_tail(80)
    assert "start-up failed" in log and f"cannot read delta file {delta}" in log
    store = StateStore(tmp_path / "state.sqlite")
    assert store.live_version().id == live["id"]  # nothing was rolled or rewritten
    assert store.integrity_problems() == []
    store.close()
