"""Whether a fact record changes the desired state: the one rule every path into the
store follows (connectors, pushes, re-scans).

A record is a new word on its fact unless:

- a source of higher priority holds the fact (``OUTRANKED``): between sources the
  higher priority wins, between equal ones the latest row;
- it says what the desired fact already says (``UNCHANGED``), as every re-read row does;
- an operator reverted the fact away from exactly this object and the feed has said
  nothing newer (``HELD``): the revert stands until the feed states another object.

What happens to an accepted word afterwards (superseding older pending changes,
coalescing, skipping facts the model already states) is the reconciler's part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from factsync.facts.records import FactRecord
from factsync.typed_yaml import Choice


class Admission(Choice):
    """What a record does to the desired state."""

    ACCEPTED = "accepted"
    UNCHANGED = "unchanged"
    HELD = "held"
    OUTRANKED = "outranked"


@dataclass(frozen=True)
class HeldFact:
    """What the desired state says of a fact now.

    Attributes:
        object: the desired object.
        deleted: whether the feed deleted the fact.
        source: the source that said so.
        reverted_from: the object an operator reverted the fact away from, if any.
    """

    object: str
    deleted: bool
    source: str
    reverted_from: str | None = None


def admit(record: FactRecord, held: HeldFact | None,
          priorities: Mapping[str, int]) -> Admission:
    """What ``record`` does to a fact whose desired state is ``held`` (``None``: none
    yet); ``priorities`` maps source names to priorities (unknown sources have 0)."""
    if held is None:
        return Admission.ACCEPTED
    if held.source != record.source and (
        priorities.get(held.source, 0) > priorities.get(record.source, 0)
    ):
        return Admission.OUTRANKED
    if (held.object, held.deleted) == (record.object, record.deleted):
        return Admission.UNCHANGED
    if held.reverted_from == record.object and not record.deleted:
        return Admission.HELD
    return Admission.ACCEPTED
