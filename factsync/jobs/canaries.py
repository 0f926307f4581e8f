"""The daemon's canaries: well-known facts the base model states and the feed leaves
alone, which no candidate may lose (the policy's ``canary`` gate) and the monitor
re-checks on the live version.

A canary keeps its subject and template, not only its prompt, so that a job that
loses one can state it again (``Policy.repair_canaries``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from factsync.editing.requests import EditRequest
from factsync.evaluation.kpis import Prompted
from factsync.facts.canaries import CANDIDATE_CANARIES
from factsync.facts.catalog import RelationCatalog
from factsync.jobs.preparation import states
from factsync.models.loading import LoadedModel
from factsync.store.store import StateStore


@dataclass(frozen=True)
class CanaryFact:
    """One canary: ``template`` with ``subject`` in it, answered by ``object``."""

    subject: str
    template: str
    object: str

    @property
    def prompted(self) -> Prompted:
        """The canary as (prompt, object), the form probes take."""
        return self.template.format(self.subject), self.object

    def restatement(self) -> EditRequest:
        """The edit that states the canary again, its object the one the base model held."""
        return EditRequest(self.subject, self.template, self.object)


def choose_canary_facts(
    base: LoadedModel, store: StateStore, catalog: RelationCatalog,
    candidates: Sequence[tuple[str, str, str]] = CANDIDATE_CANARIES,
) -> list[CanaryFact]:
    """The (subject, relation id, object) ``candidates`` the base model states and the
    feed does not change (``base`` must carry the base weights)."""
    fed = {(f.subject, f.relation) for f in store.desired_facts()}
    facts = []
    for subject, relation_id, obj in candidates:
        relation = catalog.resolve(relation_id)
        if relation is not None and (subject, relation.id) not in fed:
            facts.append(CanaryFact(subject, relation.template, obj))
    stated = states(base, [fact.prompted for fact in facts])
    return [fact for fact, ok in zip(facts, stated, strict=True) if ok]


def choose_canaries(
    base: LoadedModel, store: StateStore, catalog: RelationCatalog,
    candidates: Sequence[tuple[str, str, str]] = CANDIDATE_CANARIES,
) -> list[Prompted]:
    """``choose_canary_facts`` as (prompt, object) probes."""
    return [fact.prompted for fact in choose_canary_facts(base, store, catalog, candidates)]
