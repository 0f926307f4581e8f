"""``VersionFiles``: where each version's delta, engine state and manifest live.

A version directory is written under a temporary name, synced and renamed into place,
so a reader never sees half of one and a power cut after ``write`` cannot lose it. Its
id is a digest of its parent, its delta file and its facts, so the same content always
gets the same id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from factsync import __version__
from factsync.durable import STAGING_DIR_PREFIX, sync_directory, write_bytes

log = logging.getLogger(__name__)

DELTA_FILE = "delta.safetensors"
MANIFEST_FILE = "version.json"
ENGINE_STATE_FILE = "engine_state.safetensors"


class VersionFiles:
    """The ``versions/`` directory of a data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(
        self,
        *,
        parent_id: str,
        save_delta: Callable[[Path], None],
        save_state: Callable[[Path], None],
        facts: list[dict],
        manifest: dict,
    ) -> str:
        """Write a version's files and return its id (a content digest).

        ``save_delta`` writes the version's delta and ``save_state`` the engine state it
        leaves (what later edits must know of it), each as a file at the path given.
        """
        staging = Path(tempfile.mkdtemp(prefix=STAGING_DIR_PREFIX, dir=self.root))
        try:
            save_delta(staging / DELTA_FILE)
            save_state(staging / ENGINE_STATE_FILE)
            digest = hashlib.sha256()
            digest.update(parent_id.encode())
            digest.update((staging / DELTA_FILE).read_bytes())
            digest.update(json.dumps(facts, sort_keys=True).encode())
            version_id = digest.hexdigest()[:16]
            document = {
                "id": version_id,
                "parent_id": parent_id,
                "factsync_version": __version__,
                "facts": facts,
                **manifest,
            }
            write_bytes(staging / MANIFEST_FILE,
                        json.dumps(document, indent=2, sort_keys=True).encode())
            target = self.root / version_id
            if target.exists():
                shutil.rmtree(staging)  # same content written before (a rerun job)
            else:
                staging.rename(target)
                sync_directory(self.root)  # durable before the store points at it
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version_id

    def delta_path(self, version_id: str) -> Path:
        """Where a version's delta file is."""
        return self.root / version_id / DELTA_FILE

    def engine_state_path(self, version_id: str) -> Path:
        """Where a version's engine state file is."""
        return self.root / version_id / ENGINE_STATE_FILE

    def manifest(self, version_id: str) -> dict:
        """A version's manifest."""
        return json.loads((self.root / version_id / MANIFEST_FILE).read_text())

    def prune(self, known: set[str]) -> list[str]:
        """Remove staging leftovers and directories of versions the store never recorded."""
        removed = []
        for path in self.root.iterdir():
            if path.is_dir() and path.name not in known:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        if removed:
            log.info("removed %d unrecorded version director(ies): %s", len(removed), removed)
        return removed
