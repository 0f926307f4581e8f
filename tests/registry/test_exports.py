"""``ExportDir``: versions appear whole, ``current`` follows, crash leftovers are cleaned."""

from __future__ import annotations

import pytest

from factsync.durable import staging_path
from factsync.registry.exports import CURRENT, ExportDir


def test_current_moves_only_when_pointed_and_an_existing_version_is_kept(tmp_path):
    exports = ExportDir(tmp_path)
    first = exports.write("adapter", "v1", lambda d: (d / "a.txt").write_text("one"))
    assert exports.current("adapter") is None
    exports.point_current("adapter", "v1")
    exports.write("adapter", "v2", lambda d: (d / "a.txt").write_text("two"))
    assert exports.current("adapter") == first
    exports.point_current("adapter", "v2")
    assert exports.current("adapter") == tmp_path / "adapter" / "v2"
    assert exports.write("adapter", "v1", lambda d: pytest.fail("rewrote v1")) == first
    exports.point_current("adapter", "v1")
    assert exports.current("adapter") == first and (first / "a.txt").read_text() == "one"


def test_a_failed_write_leaves_current_alone_and_nothing_behind(tmp_path):
    exports = ExportDir(tmp_path)
    exports.write("merged", "v1", lambda d: (d / "w.bin").write_bytes(b"1"))
    exports.point_current("merged", "v1")

    def broken(directory):  # noqa: ANN001, ANN202
        (directory / "w.bin").write_bytes(b"half")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        exports.write("merged", "v2", broken)
    assert exports.current("merged") == tmp_path / "merged" / "v1"
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == [CURRENT, "v1"]


def test_clean_removes_what_a_killed_write_left(tmp_path):
    exports = ExportDir(tmp_path)
    exports.write("adapter", "v1", lambda d: (d / "a.txt").write_text("one"))
    exports.point_current("adapter", "v1")
    parent = tmp_path / "adapter"
    (parent / ".staging-v2.123-456").mkdir()
    staging_path(parent / CURRENT).symlink_to("v1")
    assert len(exports.clean()) == 2
    assert sorted(p.name for p in parent.iterdir()) == [CURRENT, "v1"]
    assert exports.current("adapter") == parent / "v1"
