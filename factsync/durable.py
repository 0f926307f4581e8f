"""Atomic and durable file writes.

A file written here is staged beside its target, synced, renamed into place and its
directory synced: a reader never sees half of it, and once the call returns a power cut
cannot lose it. A directory is staged and renamed the same way, and so is a symbolic
link. Failures surface as ``OSError`` (a full disk as ``ENOSPC``), so callers can tell a
storage fault from a bug.

Every write of the package that another process may read goes through this module.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save

STAGING_DIR_PREFIX = ".staging-"
"""Names of directories staged by ``write_directory``; leftovers of a crash match it."""


def staging_path(path: Path) -> Path:
    """The hidden name beside ``path`` that a write to it is staged under.

    Unique per process and thread, so concurrent writers never share one; it matches
    ``.<name>.*.tmp``, which is how a clean-up after a crash finds leftovers.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


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
    staging = staging_path(path)
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


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically and durably."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: object) -> None:
    """Write ``payload`` to ``path`` as indented JSON ending in a newline, atomically."""
    write_text(path, json.dumps(payload, indent=2) + "\n")


def save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` as a safetensors file at ``path``, atomically and durably."""
    write_bytes(path, save(dict(tensors), metadata=dict(metadata) if metadata else None))


def write_directory(target: Path, fill: Callable[[Path], None]) -> None:
    """Have ``fill`` write a fresh directory, then move it to ``target`` atomically.

    The directory is staged beside ``target`` (named ``STAGING_DIR_PREFIX``...) and
    removed if ``fill`` fails; everything in it is synced before the rename, so once this
    returns ``target`` is whole and durable. ``target`` must not exist yet.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(
        f"{STAGING_DIR_PREFIX}{target.name}.{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(staging, ignore_errors=True)  # left by a crashed process of the same id
    # mkdir, unlike mkdtemp, honours the umask: what is exported is as readable as any file.
    staging.mkdir()
    try:
        fill(staging)
        _sync_tree(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sync_directory(target.parent)


def replace_symlink(link: Path, points_to: str) -> None:
    """Point the symbolic link ``link`` at ``points_to`` in one rename, durably.

    A reader following ``link`` sees the old or the new destination, never none.
    """
    staging = staging_path(link)
    staging.unlink(missing_ok=True)
    try:
        staging.symlink_to(points_to)
        os.replace(staging, link)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    sync_directory(link.parent)


def _sync_tree(root: Path) -> None:
    """fsync every file and directory under ``root``, the directories last."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        sync_directory(Path(directory))
