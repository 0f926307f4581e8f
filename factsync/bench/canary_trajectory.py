"""The daemon's canaries along a ``bench lifelong`` stream, read from its kept deltas.

A lifelong run reports how many canaries it kept at each checkpoint. Which canary
went, when, and whether it fell at once or drifted, shows in the NLL of each canary's
object after each delta the run kept (``--keep-every``): one bad edit makes a jump
between two kept deltas, many small ones a slow climb.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from factsync.bench.tables import aligned
from factsync.editing.delta import ModelDelta, applied
from factsync.evaluation.kpis import Prompted
from factsync.jobs.preparation import prompted_scores
from factsync.models.loading import LoadedModel


@dataclass(frozen=True)
class CanaryReading:
    """The canaries after ``facts`` facts of a stream (0: the unedited model).

    Attributes:
        facts: facts applied.
        nll: per canary, the mean NLL of its object's tokens after its prompt.
        stated: per canary, whether the greedy answer is still its object (the daemon
            monitor's test).
    """

    facts: int
    nll: list[float]
    stated: list[bool]

    def to_json(self) -> dict:
        """The reading as plain JSON values."""
        return {"facts": self.facts, "nll": self.nll, "stated": self.stated}


def canary_trajectory(loaded: LoadedModel, canaries: Sequence[Prompted],
                      deltas: Sequence[tuple[int, Path]]) -> list[CanaryReading]:
    """``canaries`` on the unedited model, then with each of ``deltas`` (facts, file)
    applied alone, in the order given.

    Raises ``ValueError`` when a delta says it was made on another model.
    """
    readings = [_read(loaded, canaries, 0)]
    for facts, path in deltas:
        delta = ModelDelta.load(path)
        made_on = delta.metadata.get("model_fingerprint")
        if made_on is not None and made_on != loaded.fingerprint:
            raise ValueError(f"{path} was made on another model (fingerprint {made_on}, this "
                             f"one {loaded.fingerprint}): load the model the run edited")
        with applied(loaded, delta):
            readings.append(_read(loaded, canaries, facts))
    return readings


def _read(loaded: LoadedModel, canaries: Sequence[Prompted], facts: int) -> CanaryReading:
    scores = prompted_scores(loaded, canaries)
    return CanaryReading(facts, [s.mean_nll for s in scores], [s.exact for s in scores])


def format_trajectory(canaries: Sequence[Prompted], readings: Sequence[CanaryReading]) -> str:
    """One row per canary, one column per reading: the NLL, starred where the canary is
    no longer stated; a last row counts those still stated."""
    header = ["canary", *(str(r.facts) for r in readings)]
    rows = [[f"{prompt} {obj}",
             *(f"{r.nll[i]:.2f}{'' if r.stated[i] else '*'}" for r in readings)]
            for i, (prompt, obj) in enumerate(canaries)]
    rows.append(["stated", *(f"{sum(r.stated)}/{len(r.stated)}" for r in readings)])
    return aligned(header, rows)
