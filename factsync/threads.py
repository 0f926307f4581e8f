"""CPU threads for torch when several factsync processes share a machine.

torch gives every process one thread per core. Two processes on the same cores (the
daemon and a bench, or two CLI commands) then run twice the threads the machine has,
and OpenMP's threads spin while they wait for each other, so both crawl at a fraction
of half speed. Two remedies, both applied by ``share_cores``:

- waiting OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, set in
  ``factsync/__init__.py`` because OpenMP reads it when torch is imported);
- a process that starts while others run takes its share of the cores, not all of them.
  Each process holds an exclusive lock on a file of its own under
  ``<data home>/cpu-users/`` while it lives; a file nobody holds is a process that died.

``FACTSYNC_THREADS`` (or ``OMP_NUM_THREADS``) set by the operator wins over the share.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

THREADS_ENV = "FACTSYNC_THREADS"

_held: IO[str] | None = None  # this process's lock file, held until it exits


def share_cores(users_dir: Path) -> int:
    """Register this process under ``users_dir`` and give torch its share of the cores;
    the thread count chosen.

    The share is the cores divided among the live factsync processes, this one
    included, and at least one. Calling it again in the same process keeps its
    registration and recomputes the share.
    """
    import torch  # imported here: the lowest floor of factsync has no torch otherwise

    threads = _configured_threads()
    if threads is None:
        others = _register(users_dir)
        threads = max(1, (os.cpu_count() or 1) // (others + 1))
        if others:
            log.info("%d other factsync process(es) use this machine's %d cores: torch "
                     "uses %d thread(s) here", others, os.cpu_count() or 1, threads)
    torch.set_num_threads(threads)
    return threads


def _configured_threads() -> int | None:
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{name} must be a whole number of threads of at least 1, "
                             f"got {value!r}")
        return int(value)
    return None


def _register(users_dir: Path) -> int:
    """Hold this process's lock file; how many other live processes hold theirs."""
    global _held
    users_dir.mkdir(parents=True, exist_ok=True)
    if _held is None:
        mine = users_dir / str(os.getpid())
        handle = open(mine, "w")  # noqa: SIM115 (held for life)
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _held = handle
        atexit.register(mine.unlink, missing_ok=True)  # a killed process's is swept later
    others = 0
    for path in users_dir.iterdir():
        if path.name == str(os.getpid()):
            continue
        if _held_by_a_live_process(path):
            others += 1
    return others


def _held_by_a_live_process(path: Path) -> bool:
    """Whether another process holds ``path``'s lock; a file no one holds is removed."""
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            path.unlink(missing_ok=True)  # its process is gone
            return False
    except FileNotFoundError:  # removed meanwhile by another process's sweep
        return False
