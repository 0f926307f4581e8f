"""One process computes a cache entry while the others wait for it.

Sampling the corpus, computing key statistics and converting the default model each
take minutes; a daemon and a bench started together would otherwise both do the work,
each at half speed, and write the same file. The one that takes ``<path>.lock`` first
computes; the others wait for the lock and then read what it wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


@contextmanager
def computing(path: Path, what: str) -> Iterator[None]:
    """Hold the lock of the cache entry ``path`` (``<path>.lock``, made if missing);
    log, naming ``what``, when another process holds it and this one waits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is computing %s (%s); waiting for it", what, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
