"""``EngineState``: what one version's edit leaves for the engine's later edits.

Today that is the keys the edit wrote at each layer: AlphaEdit preserves the keys of
every fact applied so far (``K_p K_p^T``), so a version's keys belong to it just as its
weight delta does. The state of a live version is its lineage's states together, so it
is saved beside each version's delta, rebuilt on start-up and after a rollback, and
never kept only in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from factsync.durable import save_tensors

log = logging.getLogger(__name__)

KEY_PREFIX = "keys.layer"


class EngineStateError(ValueError):
    """An engine state file that cannot be read."""


@dataclass(frozen=True)
class EngineState:
    """Per edit layer, the keys (key, n) one version's edit wrote."""

    keys: dict[int, torch.Tensor]

    def save(self, path: Path) -> None:
        """Write the state as one safetensors file, atomically and durably."""
        save_tensors(path, {f"{KEY_PREFIX}{layer}": k.detach().contiguous().cpu()
                            for layer, k in self.keys.items()})

    @classmethod
    def load(cls, path: Path) -> EngineState:
        """Read a state written by ``save``; a missing file (a version written before
        states were kept) is an empty state; a damaged one raises ``EngineStateError``."""
        if not path.exists():
            log.warning("no engine state at %s (an older version): it preserves no keys", path)
            return cls(keys={})
        try:
            with safe_open(str(path), framework="pt") as handle:
                names = list(handle.keys())
                keys = {int(n.removeprefix(KEY_PREFIX)): handle.get_tensor(n) for n in names}
        except (OSError, ValueError, SafetensorError) as exc:
            raise EngineStateError(f"cannot read engine state file {path}: {exc}") from exc
        return cls(keys=keys)


def combined_keys(states: Iterable[EngineState]) -> dict[int, torch.Tensor]:
    """Per layer, ``K K^T`` (key, key) in float64 over every state's keys."""
    total: dict[int, torch.Tensor] = {}
    for state in states:
        for layer, keys in state.keys.items():
            k = keys.double()
            total[layer] = total[layer] + k @ k.T if layer in total else k @ k.T
    return total
