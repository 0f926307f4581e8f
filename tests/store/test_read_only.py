"""Opening the state file read-only, as the commands that only look at it do."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from factsync.facts.records import FactRecord
from factsync.store.schema import MIGRATIONS
from factsync.store.store import StateStore, StoreError


def digest(path):  # noqa: ANN001, ANN201
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "state.sqlite"
    store = StateStore(path)
    store.record_desired(record=FactRecord("France", "P36", "Paris", "t", "x"), relation="P36")
    store.close()
    return path


def test_a_read_only_open_reads_and_leaves_the_file_as_it_was(state_file):
    before = digest(state_file)
    store = StateStore(state_file, read_only=True)
    assert [f.object for f in store.desired_facts()] == ["Paris"]
    assert store.live_version().id == "base"
    store.close()
    assert digest(state_file) == before


def test_writing_through_a_read_only_store_fails_and_says_why(state_file):
    store = StateStore(state_file, read_only=True)
    with pytest.raises(StoreError, match="open read-only; this command cannot change it"):
        store.quarantine(source="s", location="a:1", reason="bad", raw="{}")
    with pytest.raises(StoreError, match="read-only"):
        store.record_desired(record=FactRecord("Italy", "P36", "Rome", "t", "x"),
                             relation="P36")
    assert store.quarantine_count() == 0
    store.close()


def test_a_read_only_store_sees_what_a_running_writer_commits(state_file):
    writer = StateStore(state_file)
    reader = StateStore(state_file, read_only=True)
    writer.record_desired(record=FactRecord("Italy", "P36", "Rome", "t", "x"), relation="P36")
    assert [f.subject for f in reader.desired_facts()] == ["France", "Italy"]
    reader.close()
    writer.close()


def test_a_missing_file_is_not_created(tmp_path):
    with pytest.raises(StoreError, match="no state file at"):
        StateStore(tmp_path / "absent.sqlite", read_only=True)
    assert not (tmp_path / "absent.sqlite").exists()


@pytest.mark.parametrize(("version", "message"), [
    (len(MIGRATIONS) - 1, "older than this factsync .* start the daemon once to migrate it"),
    (len(MIGRATIONS) + 1, "newer than this factsync .* upgrade factsync"),
])
def test_a_schema_other_than_this_factsyncs_is_refused_without_migrating(
    state_file, version, message
):
    with sqlite3.connect(state_file) as db:
        db.execute(f"PRAGMA user_version = {version}")
    with pytest.raises(StoreError, match=message):
        StateStore(state_file, read_only=True)
    with sqlite3.connect(state_file) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == version


def test_the_state_commands_read_a_data_directory_without_changing_it(tmp_path, capsys):
    from factsync.cli import main
    from factsync.daemon.service import STATE_FILE

    path = tmp_path / STATE_FILE
    store = StateStore(path)
    store.record_desired(record=FactRecord("France", "P36", "Paris", "t", "x"), relation="P36")
    store.close()
    before = digest(path)
    for command in ("status", "facts", "jobs", "versions"):
        assert main([command, "--data-dir", str(tmp_path)]) == 0
    assert "pending changes: 1" in capsys.readouterr().out
    assert digest(path) == before
