"""What the engine derives from a layer's key statistics, kept beside them on disk.

Building an engine needs, per edit layer, MEMIT's lambda (a median of ``k^T C^-1 k``,
one Cholesky factorisation of C) and for AlphaEdit a null-space projector (one
eigendecomposition of C). At a key size of 14,336 these take minutes on a CPU, and they
depend only on the statistics and a setting, so the first engine computes them and
every later one reads them: a ``DerivedStore`` is one safetensors file beside the
statistics file, holding each value under a name that says how it was made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from factsync.cache_lock import computing
from factsync.durable import save_tensors

log = logging.getLogger(__name__)


class DerivedStore:
    """Named tensors derived from one statistics file, in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get_or_make(self, name: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The tensor stored as ``name``, or ``make()``'s, stored for next time.

        Only ``name`` is read (a projector beside it may be hundreds of megabytes). A
        damaged file is logged and rewritten; processes deriving at once take turns (the
        store's lock file), so each value is computed once.
        """
        with computing(self.path, "derived key statistics"):
            stored = self._read(lambda names: [name] if name in names else [])
            if name in stored:
                return stored[name]
            value = make().detach().cpu().contiguous()
            save_tensors(self.path, self._read(list) | {name: value})
            log.info("derived %s from the key statistics; kept in %s", name, self.path)
            return value

    def _read(self, wanted: Callable[[list[str]], list[str]]) -> dict[str, torch.Tensor]:
        """The tensors whose names ``wanted`` picks from those stored; none from a
        missing or damaged file."""
        if not self.path.exists():
            return {}
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                return {name: handle.get_tensor(name) for name in wanted(list(handle.keys()))}
        except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
            log.warning("ignoring the damaged derived statistics %s (%s)", self.path, exc)
            return {}
