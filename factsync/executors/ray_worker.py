"""``FleetWorker``: one Ray actor holding a copy of the model at the live version.

The driver (``ray_fleet``) wraps this class with ``ray.remote``; it is plain Python so
that it imports without Ray. A worker loads the base model itself from a path it can
read, keeps the base weights of every editable module, and follows the driver's chain
of deltas: a chain that extends the one it carries costs the new deltas, any other a
rebuild from the base weights. Each call names the chain it expects (its key); a worker
on another one refuses with ``VersionSkew`` rather than compute on the wrong model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from contextlib import nullcontext

import torch

from factsync.editing.delta import ModelDelta, applied
from factsync.editing.requests import EditRequest
from factsync.editing.targets import TargetResult, TargetSettings, optimise_targets
from factsync.evaluation.kpis import EditCheck, PartialMeasurement, Prompted, measure_part
from factsync.models.loading import load_model
from factsync.models.precision import keep_edit_layers_in_float32


class VersionSkew(RuntimeError):
    """A worker was asked to work on a chain of deltas other than the one it carries."""


def chain_key(labels: Sequence[str]) -> str:
    """A short name of a chain of deltas by its labels, in order (empty: the base)."""
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16]


class FleetWorker:
    """A model copy at a chain of deltas, optimising targets and scoring on request.

    Args:
        source: the base model's directory (or ``default``), readable on this node.
        device: where to put the model (``auto`` takes this worker's GPU, if any).
        dtype: the model's weights' dtype.
        threads: torch CPU threads (the cores this worker reserved).
        edit_layers: the layers whose edited weights the driver holds in float32 (see
            ``models.precision``); the worker holds the same ones.
    """

    def __init__(self, source: str, *, device: str, dtype: str, threads: int,
                 edit_layers: list[int] | None) -> None:
        torch.set_num_threads(max(1, threads))
        self.loaded = load_model(source, device=device, dtype=dtype)
        keep_edit_layers_in_float32(self.loaded, edit_layers)
        paths = [self.loaded.spec.mlp_out_path(i) for i in range(self.loaded.num_layers)]
        self._base = {path: self.loaded.model.get_submodule(path).weight.detach().clone()
                      for path in paths}
        self._labels: list[str] = []

    def pid(self) -> int:
        """This worker's process id (tests kill it)."""
        return os.getpid()

    def key(self) -> str:
        """The key of the chain this worker carries."""
        return chain_key(self._labels)

    def follow(self, labels: list[str], deltas: list) -> str:  # noqa: ANN001 (ObjectRefs)
        """Carry the chain ``labels`` whose deltas are ``deltas`` (object references,
        fetched only for the deltas this worker lacks); the new chain's key."""
        import ray

        keep = len(self._labels)
        if labels[:keep] != self._labels:
            with torch.no_grad():
                for path, weight in self._base.items():
                    self.loaded.model.get_submodule(path).weight.copy_(weight)
            self._labels, keep = [], 0
        for label, delta in zip(labels[keep:], ray.get(deltas[keep:]), strict=True):
            delta.apply(self.loaded)
            self._labels.append(label)
        return self.key()

    def optimise(self, key: str, requests: list[EditRequest], layer: int, contexts: list[str],
                 settings: TargetSettings, use_neighbours: bool,
                 extra: ModelDelta | None,
                 sensitivity: torch.Tensor | None = None) -> TargetResult:
        """``optimise_targets`` for ``requests`` on the chain ``key`` plus ``extra``."""
        self._check(key)
        with self._applied(extra):
            result = optimise_targets(self.loaded, requests, layer, contexts, settings,
                                      use_neighbours=use_neighbours, sensitivity=sensitivity)
        return TargetResult(z=result.z.cpu(), initial=result.initial.cpu(),
                            probability=result.probability, steps=result.steps)

    def measure(self, key: str, checks: Sequence[EditCheck], retention: Sequence[Prompted],
                fluency_texts: Sequence[str], extra: ModelDelta | None) -> PartialMeasurement:
        """``measure_part`` on the chain ``key`` plus ``extra``."""
        self._check(key)
        with self._applied(extra):
            return measure_part(self.loaded, checks, retention, fluency_texts)

    def _check(self, key: str) -> None:
        if key != self.key():
            raise VersionSkew(f"worker {os.getpid()} carries chain {self.key()}, not {key}")

    def _applied(self, extra: ModelDelta | None):  # noqa: ANN202
        return applied(self.loaded, extra) if extra is not None and extra.layers else nullcontext()
