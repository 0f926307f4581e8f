"""The ``Executor`` interface and its in-process implementation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from factsync.editing.cancellation import Cancelled, never
from factsync.editing.delta import ModelDelta
from factsync.editing.requests import EditRequest
from factsync.editing.targets import TargetResult, TargetSettings, optimise_targets
from factsync.evaluation.kpis import EditCheck, Measurement, Prompted, measure
from factsync.models.loading import LoadedModel

Chain = Sequence[tuple[str, ModelDelta]]
"""Deltas applied in order on the base weights, each with a label unique in the chain
(a version id in the daemon)."""


class ExecutorError(RuntimeError):
    """The workers could not finish the work (every attempt of a share failed, or no
    worker could be started); the job fails and its facts wait for a retry."""


@dataclass(frozen=True)
class FleetStatus:
    """What the metrics report of the fleet.

    Attributes:
        workers: live workers.
        busy: workers running a share now.
        failures: workers lost so far (died, hung, or could not be brought up to date).
    """

    workers: int
    busy: int
    failures: int


class Executor(Protocol):
    """Runs the OPTIMIZATION stage and KPI scoring on the caller's model as it is.

    The caller says what its model carries with ``follow`` whenever that changes. What
    it applies for a moment on top (the passes of an edit under way, a candidate) is
    passed along with each call as ``applied``.
    """

    def follow(self, chain: Chain) -> None:
        """The caller's model now carries the base weights plus ``chain``."""

    def optimise(
        self, loaded: LoadedModel, requests: list[EditRequest], layer: int,
        contexts: list[str], settings: TargetSettings, *, use_neighbours: bool,
        cancelled: Cancelled = never, applied: ModelDelta | None = None,
        sensitivity: torch.Tensor | None = None,
    ) -> TargetResult:
        """``optimise_targets`` on the model as the caller has it (a ``TargetOptimiser``)."""

    def measure(
        self, loaded: LoadedModel, checks: Sequence[EditCheck], retention: Sequence[Prompted],
        fluency_texts: Sequence[str], *, applied: ModelDelta | None = None,
    ) -> Measurement:
        """``evaluation.kpis.measure`` on the model as the caller has it."""

    def close(self) -> None:
        """Release the workers, if any."""


class LocalExecutor:
    """Everything in this process, on the caller's model: the default."""

    def follow(self, chain: Chain) -> None:
        """Nothing to do: the work runs on the caller's own model."""

    def optimise(
        self, loaded: LoadedModel, requests: list[EditRequest], layer: int,
        contexts: list[str], settings: TargetSettings, *, use_neighbours: bool,
        cancelled: Cancelled = never, applied: ModelDelta | None = None,
        sensitivity: torch.Tensor | None = None,
    ) -> TargetResult:
        """``optimise_targets`` on ``loaded``."""
        return optimise_targets(loaded, requests, layer, contexts, settings,
                                use_neighbours=use_neighbours, cancelled=cancelled,
                                sensitivity=sensitivity)

    def measure(
        self, loaded: LoadedModel, checks: Sequence[EditCheck], retention: Sequence[Prompted],
        fluency_texts: Sequence[str], *, applied: ModelDelta | None = None,
    ) -> Measurement:
        """``measure`` on ``loaded``."""
        return measure(loaded, checks, retention, fluency_texts)

    def close(self) -> None:
        """Nothing to release."""
