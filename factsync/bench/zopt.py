"""``factsync bench zopt``: batched target optimisation against one fact at a time.

Both paths optimise the same facts with the same settings in one run; the per-fact
results are identical by construction (per-fact losses are summed), so only time differs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from factsync.editing.requests import EditRequest
from factsync.editing.targets import TargetSettings, optimise_targets
from factsync.models.loading import LoadedModel


@dataclass(frozen=True)
class ZoptTiming:
    """Wall time of both paths and how far their targets differ."""

    facts: int
    batched_seconds: float
    single_seconds: float
    max_probability_gap: float

    @property
    def speedup(self) -> float:
        """How many times faster the batched path was."""
        return self.single_seconds / self.batched_seconds


def time_zopt(
    loaded: LoadedModel,
    requests: list[EditRequest],
    layer: int,
    contexts: list[str],
    settings: TargetSettings,
) -> ZoptTiming:
    """Optimise ``requests`` batched (``settings``) and one at a time without replay."""
    single = replace(settings, chunk_size=1, replay_frozen=False)
    started = time.perf_counter()
    batched_result = optimise_targets(
        loaded, requests, layer, contexts, settings, use_neighbours=False
    )
    middle = time.perf_counter()
    single_result = optimise_targets(
        loaded, requests, layer, contexts, single, use_neighbours=False
    )
    ended = time.perf_counter()
    gap = max(
        abs(a - b)
        for a, b in zip(batched_result.probability, single_result.probability, strict=True)
    )
    return ZoptTiming(len(requests), middle - started, ended - middle, gap)


def format_timing(timing: ZoptTiming) -> str:
    """A small table of the two paths."""
    return "\n".join(
        [
            "path | facts | seconds | seconds/fact",
            "---- | ----- | ------- | ------------",
            f"batched | {timing.facts} | {timing.batched_seconds:.1f} | "
            f"{timing.batched_seconds / timing.facts:.2f}",
            f"one at a time | {timing.facts} | {timing.single_seconds:.1f} | "
            f"{timing.single_seconds / timing.facts:.2f}",
            f"speedup: {timing.speedup:.2f}x (largest per-fact probability gap "
            f"{timing.max_probability_gap:.2e})",
        ]
    )
