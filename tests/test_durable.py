"""Atomic, durable writes: a reader sees the old content or the new, never a part of it."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from factsync.durable import replace_symlink, write_directory, write_json, write_text


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_json_and_text_replace_the_old_file_and_leave_nothing_beside_it(tmp_path):
    target = tmp_path / "deep" / "report.json"
    write_json(target, {"a": 1})
    write_json(target, {"b": [1, 2]})
    assert json.loads(target.read_text()) == {"b": [1, 2]}
    assert target.read_text().endswith("}\n")
    notes = tmp_path / "notes.txt"
    write_text(notes, "Zürich\n")
    assert notes.read_bytes() == "Zürich\n".encode()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "notes.txt", "report.json"]


def test_a_write_that_fails_keeps_the_old_file_and_removes_its_staging(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    write_json(target, {"old": True})

    def full_disk(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_directory_appears_whole_and_as_readable_as_any_file(tmp_path, umask_022):
    target = tmp_path / "exports" / "v1"

    def fill(staging):  # noqa: ANN001, ANN202
        assert not target.exists()  # nothing shows until it is complete
        write_text(staging / "config.json", "{}")
        (staging / "weights").mkdir()
        (staging / "weights" / "part-1.bin").write_bytes(b"\0" * 16)

    write_directory(target, fill)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "config.json", "weights", "weights/part-1.bin"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert [p.name for p in target.parent.iterdir()] == ["v1"]


def test_a_directory_whose_fill_fails_leaves_nothing(tmp_path):
    def fill(staging):  # noqa: ANN001, ANN202
        (staging / "half.bin").write_bytes(b"\0")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        write_directory(tmp_path / "v1", fill)
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_is_swapped_in_one_rename(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    link = tmp_path / "current"
    replace_symlink(link, "v1")
    assert link.resolve() == tmp_path / "v1"
    replace_symlink(link, "v2")
    assert os.readlink(link) == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1", "v2"]
