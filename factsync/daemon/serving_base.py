"""Which base an export's adapter applies to, and when the chain must be folded.

An adapter carries the deltas of the versions after the live version's latest fold (or
all of them when there is none) and applies to that fold's checkpoint (or the base
model). A MEMIT delta has rank at most the keys its job wrote, so the adapter's rank
grows with every version until it passes ``export.max_rank``; the exporter then folds
the live version: its whole weights become a checkpoint that is the new serving base,
and the next adapters start empty from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from factsync.store.records import Fold, Version


@dataclass(frozen=True)
class ServingBase:
    """What serves a version: a base, plus an adapter of the versions after it.

    Attributes:
        base: the base model's directory, or the checkpoint of the fold it starts from.
        fold: the folded version that base is, if any.
        chain: the versions after the base, oldest first; the adapter sums their deltas.
    """

    base: str
    fold: str | None
    chain: list[Version]


def serving_base(lineage: Sequence[Version], folds: Mapping[str, Fold],
                 base_model: str) -> ServingBase:
    """The serving base of the last version of ``lineage`` (oldest first): its latest
    folded version, itself included, or the base model."""
    for position in range(len(lineage) - 1, -1, -1):
        fold = folds.get(lineage[position].id)
        if fold is not None:
            return ServingBase(fold.checkpoint, fold.version_id, list(lineage[position + 1:]))
    return ServingBase(base_model, None, list(lineage))
