"""A full or read-only disk delays edits, tells the operator, and never loses a fact.

The data directory (or its ``versions/``) is put on a real, small tmpfs and filled up
until the kernel answers "no space left on device"; the daemon's log and its facts
directory stay on the normal disk, as they would on a separate volume.
"""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from factsync.daemon.host_health import data_dir_problem
from factsync.durable import save_tensors
from factsync.models.loading import model_dir_problem
from factsync.store.store import StateStore

pytestmark = pytest.mark.reliability

HEALTH = {"health_check_seconds": 0.5, "full_scan_seconds": 2, "worker_poll_seconds": 0.5}


def _write_fact(facts_dir: Path, name: str, subject: str, obj: str) -> None:
    staged = facts_dir / f".{name}.tmp"
    staged.write_text(json.dumps({"subject": subject, "relation": "P36", "object": obj}) + "\n")
    staged.rename(facts_dir / name)


def _applied(daemon, subject: str) -> bool:  # noqa: ANN001
    return [f["state"] for f in daemon.get(f"/facts?subject={subject}")] == ["applied"]


def _alerts(daemon) -> set[str]:  # noqa: ANN001
    return {a["name"] for a in daemon.get("/status")["alerts"]}


def test_a_full_data_dir_holds_jobs_back_and_loses_nothing(
    tmp_path, tiny_daemon, small_filesystem, fill_up, rebuilt_digest
):
    data_dir = small_filesystem(24)
    daemon = tiny_daemon(
        tmp_path, data_dir=str(data_dir), min_free_mb=1, schedules=HEALTH,
        connectors=[{"type": "file", "path": str(tmp_path / "facts"), "full_scan_seconds": 2}],
    )
    daemon.start()
    assert daemon.metric("factsync_data_dir_writable") == 1
    _write_fact(daemon.facts_dir, "france.jsonl", "France", "Rome")
    daemon.wait_for(lambda: _applied(daemon, "France"), 120, "France to be applied")
    live_before = daemon.get("/status")["live_version"]
    jobs_before = daemon.get("/status")["jobs"]

    filler = fill_up(data_dir)
    _write_fact(daemon.facts_dir, "italy.jsonl", "Italy", "Paris")
    daemon.wait_for(lambda: "FactsyncDataDirUnwritable" in _alerts(daemon), 30,
                    "the full-disk alert")
    assert daemon.metric("factsync_data_dir_writable") == 0
    summary = next(a["summary"] for a in daemon.get("/status")["alerts"]
                   if a["name"] == "FactsyncDataDirUnwritable")
    assert "No space left on device" in summary and str(data_dir) in summary
    time.sleep(3)  # long enough for several worker ticks and a full scan
    status = daemon.get("/status")
    assert status["live_version"] == live_before and status["jobs"] == jobs_before
    assert not _applied(daemon, "Italy")
    code, answer = daemon.post("/generate", {"prompt": "The capital of France is",
                                             "max_new_tokens": 2})
    assert code == 200 and answer["text"]  # serving goes on from memory

    filler.unlink()
    daemon.wait_for(lambda: _applied(daemon, "Italy"), 120, "Italy once space is back")
    daemon.wait_for(lambda: "FactsyncDataDirUnwritable" not in _alerts(daemon), 30,
                    "the alert to clear")
    assert daemon.metric("factsync_data_dir_writable") == 1
    weights = daemon.get("/weights")
    assert daemon.stop() == 0

    store = StateStore(data_dir / "state.sqlite")
    assert store.integrity_problems() == []
    assert sorted(c.subject for c in store.changes(state="applied")) == ["France", "Italy"]
    assert len(store.versions()) == 3  # base, France, Italy: each change applied once
    store.close()
    assert weights["sha256"] == rebuilt_digest(data_dir, weights["version"])


def test_a_disk_filling_during_a_job_sends_its_facts_back_to_pending(
    tmp_path, tiny_daemon, small_filesystem, fill_up, rebuilt_digest
):
    daemon = tiny_daemon(tmp_path, schedules=HEALTH)
    versions = small_filesystem(8, at=tmp_path / "versions")  # a volume of its own
    filler = fill_up(versions)
    daemon.start()
    _write_fact(daemon.facts_dir, "france.jsonl", "France", "Rome")
    failed = daemon.wait_for(lambda: daemon.get("/jobs?state=failed"), 120, "a failed job")
    reason = daemon.get(f"/jobs/{failed[0]['id']}")["events"][-1]["reason"]
    assert "No space left on device" in reason and "its facts wait as pending" in reason
    assert "FactsyncJobFailed" in _alerts(daemon)
    assert daemon.metric('factsync_jobs_total{outcome="failed"}') == 1
    assert [(f["state"], f["reason"]) for f in daemon.get("/facts?subject=France")] == [
        ("pending", reason)]
    assert daemon.get("/status")["live_version"]["seq"] == 0

    filler.unlink()  # the worker retries after its back-off
    daemon.wait_for(lambda: _applied(daemon, "France"), 120, "France once space is back")
    assert "FactsyncJobFailed" not in _alerts(daemon)
    weights = daemon.get("/weights")
    assert daemon.stop() == 0
    assert weights["sha256"] == rebuilt_digest(tmp_path, weights["version"])


def test_a_read_only_or_nearly_full_data_dir_is_named_with_its_cause(
    tmp_path, small_filesystem
):
    read_only = small_filesystem(1, read_only=True)
    assert data_dir_problem(read_only, min_free_bytes=0) == (
        f"cannot write {read_only}: Read-only file system")
    small = small_filesystem(1)
    assert "less than 2 MiB free" in data_dir_problem(small, min_free_bytes=2 * 2**20)
    assert data_dir_problem(small, min_free_bytes=2**19) is None
    assert list(small.iterdir()) == []  # the probe file is removed


def test_a_read_only_data_dir_stops_start_up_with_a_clear_error(
    tmp_path, tiny_daemon, small_filesystem
):
    daemon = tiny_daemon(tmp_path, data_dir=str(small_filesystem(1, read_only=True)))
    daemon.start(wait=False)
    assert daemon.process.wait(timeout=60) == 1
    assert "Read-only file system" in daemon.log_tail()


def test_a_vanished_model_dir_alerts_while_serving_goes_on_and_blocks_a_restart(
    tmp_path, tiny_daemon, tiny_model_dir, rebuilt_digest
):
    daemon = tiny_daemon(tmp_path, schedules=HEALTH)
    daemon.start()
    assert daemon.metric("factsync_model_dir_present") == 1
    moved = tiny_model_dir.rename(tiny_model_dir.with_name(tiny_model_dir.name + "-moved"))
    try:
        daemon.wait_for(lambda: "FactsyncModelDirMissing" in _alerts(daemon), 30,
                        "the missing-model alert")
        assert daemon.metric("factsync_model_dir_present") == 0
        assert model_dir_problem(tiny_model_dir) == f"model directory {tiny_model_dir} is gone"
        _write_fact(daemon.facts_dir, "france.jsonl", "France", "Rome")
        daemon.wait_for(lambda: _applied(daemon, "France"), 120, "France, edited in memory")
        weights = daemon.get("/weights")
        assert daemon.stop() == 0

        daemon.start(wait=False)
        assert daemon.process.wait(timeout=60) == 1
        assert f"config.model: path '{tiny_model_dir}' is not a model directory" in (
            daemon.log_tail())
    finally:
        moved.rename(tiny_model_dir)
    daemon.start()
    assert daemon.get("/weights") == weights
    assert "FactsyncModelDirMissing" not in _alerts(daemon)
    assert daemon.stop() == 0
    assert weights["sha256"] == rebuilt_digest(tmp_path, weights["version"])


def test_a_write_that_runs_out_of_space_raises_enospc_and_keeps_the_old_file(
    small_filesystem, fill_up
):
    directory = small_filesystem(1)
    target = directory / "delta.safetensors"
    save_tensors(target, {"a": torch.ones(4)})
    filler = fill_up(directory)
    with pytest.raises(OSError) as raised:
        save_tensors(target, {"a": torch.zeros(4096)})
    assert raised.value.errno == errno.ENOSPC
    assert sorted(p.name for p in directory.iterdir()) == [filler.name, target.name]
    assert torch.equal(load_file(target)["a"], torch.ones(4))
