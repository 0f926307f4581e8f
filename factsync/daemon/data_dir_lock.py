"""The data directory's lock: one factsync process per data directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_FILE = "factsync.lock"


class AlreadyRunning(RuntimeError):
    """Another factsync process holds the data directory."""


def lock_data_dir(directory: Path) -> IO[str]:
    """Take ``directory``'s lock for the life of the process (closing the handle returns
    it); the file holds this process's id. Raises ``AlreadyRunning`` when it is held."""
    path = directory / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise AlreadyRunning(
            f"another factsync process is using {directory} (lock {path} is held)"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
