"""The file connector with real file-system events into a real store."""

from __future__ import annotations

import json
import os
import time

import pytest

from factsync.connectors.files import FileConnector


def connector(tmp_path, ingest, **kw):  # noqa: ANN001, ANN201
    (tmp_path / "facts").mkdir(exist_ok=True)  # a scan or start would make it
    return FileConnector(name="file:facts", directory=tmp_path / "facts", sink=ingest,
                         debounce_seconds=0.2, **kw)


def wait_until(condition, timeout=10.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def jsonl(*rows) -> str:  # noqa: ANN002
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def test_a_scan_takes_good_rows_and_quarantines_bad_ones_with_file_and_line(
    tmp_path, ingest, store
):
    files = connector(tmp_path, ingest)
    (files.directory / "a.jsonl").write_text(jsonl(
        {"subject": "France", "relation": "capital", "object": "Paris"},
        "{not json",
        {"subject": "Atlantis", "relation": "P9999", "object": "Sea"},
        {"subject": "Italy", "relation": "P36", "object": "Rome"},
    ))
    (files.directory / "notes.txt").write_text("ignored")
    report = files.scan()
    assert (report.rows, report.rejected) == (4, 2)
    assert sorted(f.subject for f in store.desired_facts()) == ["France", "Italy"]
    reasons = {q.location: q.reason for q in store.quarantined()}
    assert reasons["a.jsonl:2"].startswith("not valid JSON")
    assert reasons["a.jsonl:3"].startswith("unknown relation 'P9999'")
    files.scan()  # a second full scan changes nothing and quarantines nothing again
    assert len(store.changes()) == 2 and store.quarantine_count() == 2


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
def test_written_and_renamed_files_are_picked_up_by_events(tmp_path, ingest, store, polling):
    files = connector(tmp_path, ingest, polling=polling)
    files.start()
    try:
        (files.directory / "a.csv").write_text("subject,relation,object\nFrance,P36,Paris\n")
        staging = files.directory / ".b.jsonl.tmp"
        staging.write_text(jsonl({"subject": "Italy", "relation": "capital", "object": "Rome"}))
        staging.rename(files.directory / "b.jsonl")
        assert wait_until(lambda: len(store.desired_facts()) == 2)
        (files.directory / "a.csv").write_text("subject,relation,object\nFrance,P36,Lyon\n")
        assert wait_until(lambda: store.desired_facts(subject="France")[0].object == "Lyon")
        os.remove(files.directory / "a.csv")  # a vanished file is not a deletion
        time.sleep(0.5)
        assert not store.desired_facts(subject="France")[0].deleted
    finally:
        files.stop()


def test_files_resolving_outside_the_directory_are_not_read(tmp_path, ingest, store):
    outside = tmp_path / "secret.jsonl"
    outside.write_text(jsonl({"subject": "France", "relation": "P36", "object": "Paris"}))
    files = connector(tmp_path, ingest)
    (files.directory / "link.jsonl").symlink_to(outside)
    assert files.scan().rows == 0
    assert files.read(files.directory / ".." / "secret.jsonl").rows == 0
    assert store.desired_facts() == []


def test_building_touches_nothing_and_a_scan_makes_the_directory(tmp_path, ingest):
    files = FileConnector(name="file:facts", directory=tmp_path / "new" / "facts", sink=ingest)
    assert not (tmp_path / "new").exists()
    assert files.scan().rows == 0 and (tmp_path / "new" / "facts").is_dir()
