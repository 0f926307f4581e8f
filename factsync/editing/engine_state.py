"""``EngineState``: what one version's edit leaves for the engine's later edits.

Today that is the keys the edit wrote at each layer, with the subject each key belongs
to. The spread holds the keys of facts applied earlier in place (``K_p K_p^T``), so a
version's keys belong to it just as its weight delta does. The state of a live version
is its lineage's states together, so it is saved beside each version's delta, rebuilt
on start-up and after a rollback, and never kept only in memory.

A subject written again supersedes its earlier keys: MEMIT's key is read at the
subject's last token, before the relation's words, so every fact of a subject shares
it, and holding the old key in place would fight the new edit of the same key.

A long-lived daemon's history is thousands of edits, so its engine does not hold the
keys that still stand: a ``StateFile`` names where a version's keys are on disk and is
read only when a subject of it is written again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from factsync.durable import save_tensors

log = logging.getLogger(__name__)

KEY_PREFIX = "keys.layer"
SUBJECTS_METADATA = "subjects"


class EngineStateError(ValueError):
    """An engine state file that cannot be read."""


@dataclass(frozen=True)
class EngineState:
    """Per edit layer, the keys (key, n) one version's edit wrote.

    Attributes:
        keys: per layer, one column per key.
        subjects: the subject of each column, the same at every layer; ``None`` where
            it is not known (states saved before subjects were recorded): such keys
            are never superseded.
    """

    keys: dict[int, torch.Tensor]
    subjects: tuple[str | None, ...]

    def __post_init__(self) -> None:
        for layer, keys in self.keys.items():
            if keys.shape[1] != len(self.subjects):
                raise ValueError(f"layer {layer} has {keys.shape[1]} keys for "
                                 f"{len(self.subjects)} subjects")

    @classmethod
    def empty(cls) -> EngineState:
        """A state that preserves nothing."""
        return cls(keys={}, subjects=())

    def save(self, path: Path) -> None:
        """Write the state as one safetensors file, atomically and durably."""
        save_tensors(path, {f"{KEY_PREFIX}{layer}": k.detach().contiguous().cpu()
                            for layer, k in self.keys.items()},
                     metadata={SUBJECTS_METADATA: json.dumps(list(self.subjects))})

    @classmethod
    def load(cls, path: Path) -> EngineState:
        """Read a state written by ``save``; a missing file (a version written before
        states were kept) is an empty state; a damaged one raises ``EngineStateError``."""
        if not path.exists():
            log.warning("no engine state at %s (an older version): it preserves no keys", path)
            return cls.empty()
        try:
            with safe_open(str(path), framework="pt") as handle:
                names = list(handle.keys())
                keys = {int(n.removeprefix(KEY_PREFIX)): handle.get_tensor(n) for n in names}
                subjects = _recorded_subjects(handle)
            return cls(keys=keys, subjects=subjects)
        except (OSError, ValueError, SafetensorError) as exc:
            raise EngineStateError(f"cannot read engine state file {path}: {exc}") from exc

    def select(self, columns: list[int]) -> EngineState:
        """The state with only ``columns``, in that order."""
        return EngineState(keys={layer: k[:, columns] for layer, k in self.keys.items()},
                           subjects=tuple(self.subjects[c] for c in columns))

    def by_subject(self) -> dict[str, dict[int, torch.Tensor]]:
        """Per known subject, its keys (key, m) at each layer."""
        columns: dict[str, list[int]] = {}
        for column, subject in enumerate(self.subjects):
            if subject is not None:
                columns.setdefault(subject, []).append(column)
        return {subject: {layer: k[:, index] for layer, k in self.keys.items()}
                for subject, index in columns.items()}


class StateFile:
    """A version's engine state on disk, read only when its keys are needed.

    Its subjects (the file's metadata) are read at once, so a missing or damaged file
    is reported where the lineage is restored, not in the middle of a later edit.

    Raises:
        EngineStateError: the file exists but cannot be read.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.subjects = _subjects_of(self.path)

    def read(self) -> EngineState:
        """The state, as ``EngineState.load`` reads it."""
        return EngineState.load(self.path)

    def __repr__(self) -> str:
        return f"StateFile({str(self.path)!r})"


KeySource = EngineState | StateFile
"""Where an engine keeps the keys of a state: in memory, or in its file."""


def read_state(source: KeySource) -> EngineState:
    """The state ``source`` holds or names."""
    return source.read() if isinstance(source, StateFile) else source


def _subjects_of(path: Path) -> tuple[str | None, ...]:
    if not path.exists():
        return ()
    try:
        with safe_open(str(path), framework="pt") as handle:
            return _recorded_subjects(handle)
    except (OSError, ValueError, SafetensorError) as exc:
        raise EngineStateError(f"cannot read engine state file {path}: {exc}") from exc


def _recorded_subjects(handle: safe_open) -> tuple[str | None, ...]:
    """The subjects an open state file records; unknown ones for a file saved before
    subjects were, one per key column."""
    recorded = (handle.metadata() or {}).get(SUBJECTS_METADATA)
    if recorded is not None:
        return tuple(json.loads(recorded))
    names = list(handle.keys())
    return (None,) * (handle.get_slice(names[0]).get_shape()[1] if names else 0)


def standing(lineage: Sequence[EngineState]) -> list[EngineState]:
    """Each state of ``lineage`` (oldest first) with only the keys that still stand: a
    subject written again by a later state loses its columns in every earlier one."""
    kept: list[EngineState] = []
    later: set[str] = set()
    for state in reversed(lineage):
        kept.append(state.select([c for c, s in enumerate(state.subjects) if s not in later]))
        later.update(s for s in state.subjects if s is not None)
    return kept[::-1]


def concatenated(lineage: Sequence[EngineState]) -> EngineState:
    """The standing keys of ``lineage`` (oldest first) as one state."""
    kept = standing(lineage)
    layers = sorted({layer for state in kept for layer in state.keys})
    return EngineState(
        keys={layer: torch.cat([s.keys[layer].float().cpu() for s in kept if layer in s.keys],
                               dim=1)
              for layer in layers},
        subjects=tuple(subject for s in kept for subject in s.subjects))
