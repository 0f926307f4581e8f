"""Atomic and durable file writes.

A file written here is staged beside its target, synced, renamed into place and its
directory synced: a reader never sees half of it, and once the call returns a power cut
cannot lose it. Failures surface as ``OSError`` (a full disk as ``ENOSPC``), so callers
can tell a storage fault from a bug.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save


def sync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename into it, say) durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(staging, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` as a safetensors file at ``path``, atomically and durably."""
    write_bytes(path, save(dict(tensors), metadata=dict(metadata) if metadata else None))
