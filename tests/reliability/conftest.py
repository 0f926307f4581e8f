"""Reliability fixtures. The cases run a daemon on a tiny model (``tiny_daemon``, shared
in ``tests/conftest.py``), so each fault case takes seconds.

- ``small_filesystem``: a factory ``small_filesystem(size_mb, *, read_only=False,
  at=None)`` mounting a real tmpfs of that size (at ``at``, or a fresh directory) and
  returning its mount point; unmounted after the test. Needs root; skipped elsewhere,
  except in CI (``CI`` set), where it fails.
- ``rebuilt_digest``: ``rebuilt_digest(data_dir, version_id)`` is the weights digest of
  the tiny model rebuilt from the base plus that version's chain of deltas, to compare
  with what a daemon serves (``GET /weights``).
- ``fill_up``: ``fill_up(directory)`` writes a file there until the file system answers
  "no space left", and returns its path.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from factsync.editing.delta import ModelDelta
from factsync.jobs.model_state import ModelState
from factsync.models.loading import load_model
from factsync.store.store import StateStore


@pytest.fixture
def small_filesystem(tmp_path_factory):
    mounted: list[Path] = []

    def mount(size_mb: int, *, read_only: bool = False, at: Path | None = None) -> Path:
        point = at or tmp_path_factory.mktemp("small-fs")
        point.mkdir(parents=True, exist_ok=True)
        options = f"size={size_mb}m" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            message = f"cannot mount a tmpfs here: {result.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "--lazy", str(point)], check=True)


@pytest.fixture
def fill_up():
    def fill(directory: Path) -> Path:
        filler = directory / ".filler"
        descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for chunk in (2**20, 4096):  # big writes, then the last pages
                while True:
                    try:
                        os.write(descriptor, b"\0" * chunk)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                        break
        finally:
            os.close(descriptor)
        return filler

    return fill


@pytest.fixture
def rebuilt_digest(tiny_model_dir):
    def digest(data_dir: Path, version_id: str) -> str:
        store = StateStore(data_dir / "state.sqlite")
        lineage = store.lineage(version_id=version_id)
        store.close()
        rebuilt = ModelState(load_model(str(tiny_model_dir), device="cpu"))
        rebuilt.rebuild([ModelDelta.load(data_dir / "versions" / v.id / "delta.safetensors")
                         for v in lineage], version_id=version_id)
        return rebuilt.digest()

    return digest
