"""One tensor kept on disk beside the key statistics, computed once and checked on read.

A file holds the tensor and metadata naming what it was computed from. A file that is
unreadable, names something else or holds non-finite values is computed again with a
WARNING, and while one process computes an entry the others wait for it. An entry that
ships with factsync is copied into the cache instead of computed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from factsync.cache_lock import computing
from factsync.durable import save_tensors, write_bytes

log = logging.getLogger(__name__)


def cached_tensor(path: Path, name: str, expected: dict[str, str], what: str,
                  compute: Callable[[], torch.Tensor], *,
                  shipped: Path | None = None) -> torch.Tensor:
    """The tensor ``name`` stored at ``path`` when the file's metadata equals
    ``expected``, else the one stored at ``shipped`` (copied to ``path``), else
    ``compute()``'s answer, stored there; ``what`` names it in the logs."""
    with computing(path, what):
        found = _read(path, name, expected)
        if found is not None:
            log.info("reusing %s from %s", what, path)
            return found
        found = _read(shipped, name, expected) if shipped is not None else None
        if found is not None:
            write_bytes(path, shipped.read_bytes())
            log.info("using %s shipped with factsync", what)
            return found
        log.info("computing %s", what)
        value = compute()
        save_tensors(path, {name: value.contiguous()}, expected)
        return value


def _read(path: Path, name: str, expected: dict[str, str]) -> torch.Tensor | None:
    """The stored tensor, or ``None`` when there is none, or it is damaged or another
    (logged at WARNING: it is computed again)."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            value = handle.get_tensor(name)
    except (OSError, SafetensorError, KeyError, RuntimeError) as exc:
        log.warning("cache file %s is unreadable (%s); computing it again", path, exc)
        return None
    if any(metadata.get(k) != v for k, v in expected.items()) or not torch.isfinite(value).all():
        log.warning("cache file %s is not what its name says; computing it again", path)
        return None
    return value
