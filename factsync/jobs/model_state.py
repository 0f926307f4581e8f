"""``ModelState``: the base model's weights, the worker's model and the served model.

The worker edits and scores candidates on its own copy while the API keeps answering
from the live version on a second copy, which changes only when a version is promoted.
Both are rebuilt exactly from the base weights plus the live version's chain of deltas:
the worker's by applying them, the served copy by taking the worker's weights.
The served copy knows which version it carries, so a reader can tell it is reading the
version it expects.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from factsync.editing.delta import ModelDelta
from factsync.models.generation import greedy
from factsync.models.loading import LoadedModel


class VersionMoved(RuntimeError):
    """The served model moved on from the version a reader asked for."""


class ModelState:
    """Owns the two in-memory models.

    Args:
        base: the freshly loaded base model; it becomes the worker's copy.
    """

    def __init__(self, base: LoadedModel) -> None:
        self.work = base
        self.serving = copy.copy(base)
        self.serving.model = copy.deepcopy(base.model)
        self._serving_lock = threading.Lock()
        self._serving_version: str | None = None
        self._paths = [base.spec.mlp_out_path(i) for i in range(base.num_layers)]
        self._base = {
            path: base.model.get_submodule(path).weight.detach().clone() for path in self._paths
        }

    def rebuild(self, chain: Iterable[ModelDelta], *, version_id: str) -> None:
        """Set both models to the base weights plus ``chain`` (the lineage of
        ``version_id``) applied in order, taking one delta of it at a time.

        If ``chain`` raises (a delta file that cannot be read, say), the worker's model
        takes the served model's weights back, so both still carry the version they
        carried before, and the error propagates.
        """
        with torch.no_grad():
            try:
                for path, weight in self._base.items():
                    self.work.model.get_submodule(path).weight.copy_(weight)
                for delta in chain:
                    delta.apply(self.work)
            except BaseException:
                with self._serving_lock:
                    _copy_weights(self.serving, self.work, self._paths)
                raise
            with self._serving_lock:
                _copy_weights(self.work, self.serving, self._paths)
                self._serving_version = version_id

    def promote(self, delta: ModelDelta, *, version_id: str) -> None:
        """Apply the delta of ``version_id``, just promoted, to the served model (the
        worker has it)."""
        with self._serving_lock:
            delta.apply(self.serving)
            self._serving_version = version_id

    @contextmanager
    def serving_at(self, version_id: str) -> Iterator[LoadedModel | None]:
        """The served model, held still, if it carries ``version_id``; else ``None``."""
        with self._serving_lock:
            yield self.serving if self._serving_version == version_id else None

    def save_serving(self, directory: Path, *, version_id: str) -> None:
        """Write the served model and its tokenizer as a HuggingFace checkpoint.

        Raises:
            VersionMoved: the served model no longer carries ``version_id``.
        """
        with self.serving_at(version_id) as served:
            if served is None:
                raise VersionMoved(f"the served model no longer carries version {version_id}")
            served.model.save_pretrained(directory)
            served.tokenizer.save_pretrained(directory)

    def generate(self, prompt: str, max_new_tokens: int) -> str:
        """Greedy completion from the live version."""
        with self._serving_lock:
            return greedy(self.serving, prompt, max_new_tokens)

    def digest(self, *, serving: bool = False) -> str:
        """SHA-256 of every editable weight of one copy (the served one if ``serving``)."""
        loaded = self.serving if serving else self.work
        digest = hashlib.sha256()
        with self._serving_lock if serving else nullcontext():
            for path in self._paths:
                weight = loaded.model.get_submodule(path).weight.detach()
                digest.update(weight.cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def _copy_weights(source: LoadedModel, target: LoadedModel, paths: list[str]) -> None:
    for path in paths:
        target.model.get_submodule(path).weight.copy_(source.model.get_submodule(path).weight)
