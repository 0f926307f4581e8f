"""Preparing a job's facts for the engine: old objects, NME neighbours, scoring probes.

For each fact the old object is what the live model answers now. Neighbours come from
the store: facts with the same relation whose object is this fact's old object, and
other facts about the same subject. Only those the live model gets right are kept; they
are split into disjoint sets, one joins the edit (NME) and the other is held out to
score neighbourhood preservation. With ``editing.contrast_neighbours`` the edit also
holds facts of its relation with other objects (``evaluation.contrast``'s reasoning).

The store is asked only about the facts at hand (a bounded page of same-object
candidates, the subject's other facts, a drawn sample of applied facts), so preparing a
job costs the same with a hundred applied facts as with a hundred thousand.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from factsync.editing.requests import EditRequest, Neighbour
from factsync.evaluation.kpis import EditCheck, Prompted
from factsync.facts.catalog import Relation, RelationCatalog
from factsync.models.generation import greedy, short_answer
from factsync.models.loading import LoadedModel
from factsync.models.scoring import TargetScore, score_targets
from factsync.models.text import PromptSpec, object_ids, read_back
from factsync.policies.schema import Policy
from factsync.store.records import AppliedFact, FactChange, KnownFact
from factsync.store.store import StateStore

ANSWER_TOKENS = 8
"""Greedy tokens read to find the live model's current answer."""

CANDIDATES_PER_SLOT = 3
"""Neighbour candidates checked per neighbour wanted, to bound the cost of checking."""


@dataclass(frozen=True)
class PreparedFact:
    """One change ready for the engine and the evaluator."""

    change: FactChange
    relation: Relation
    request: EditRequest
    check: EditCheck


def states(loaded: LoadedModel, pairs: Sequence[Prompted]) -> list[bool]:
    """Whether the model's greedy answer to each prompt is its object (teacher forced)."""
    return [score.exact for score in prompted_scores(loaded, pairs)]


def prompted_scores(loaded: LoadedModel, pairs: Sequence[Prompted]) -> list[TargetScore]:
    """Each (prompt, object)'s object scored after its prompt."""
    if not pairs:
        return []
    return score_targets(loaded, [PromptSpec("{}", prompt, object_ids(loaded, obj))
                                  for prompt, obj in pairs])


def live_states(loaded: LoadedModel, catalog: RelationCatalog,
                changes: Sequence[FactChange]) -> list[bool]:
    """Whether the model already states each change's object on its relation's prompt."""
    return states(loaded, [(_relation(catalog, c.relation).template.format(c.subject), c.object)
                           for c in changes])


def unrepresentable(loaded: LoadedModel, change: FactChange) -> str | None:
    """Why the model cannot be edited to state ``change``: its tokenizer cannot spell the
    subject or the object; ``None`` when it can."""
    for part, text in (("subject", change.subject), ("object", change.object)):
        seen = read_back(loaded, text)
        if seen != text:
            return (f"the model's tokenizer cannot represent the {part} {text!r} (it reads "
                    f"{seen!r}), so no edit can state this fact; fix the source or use "
                    "another model")
    return None


def prepare_job(
    loaded: LoadedModel,
    store: StateStore,
    catalog: RelationCatalog,
    policy: Policy,
    changes: Sequence[FactChange],
) -> list[PreparedFact]:
    """Edit requests and scoring probes for ``changes``, from the live model and store."""
    in_job = {(c.subject, c.relation) for c in changes}
    editing_wanted = policy.editing.max_neighbours if policy.editing.neighbours else 0
    limit = CANDIDATES_PER_SLOT * (editing_wanted + policy.evaluation.held_out_neighbours)
    prepared = []
    for change in changes:
        relation = _relation(catalog, change.relation)
        prompt = relation.template.format(change.subject)
        old = short_answer(greedy(loaded, prompt, ANSWER_TOKENS)) or None
        candidates = neighbour_candidates(store, change, old, limit=limit, exclude=in_job)
        editing, held_out = _neighbours(loaded, catalog, policy, candidates)
        contrast = contrast_candidates(store, change, old, policy, exclude=in_job)
        editing += _known(loaded, catalog, contrast)[: policy.editing.contrast_neighbours]
        request = EditRequest(
            subject=change.subject,
            template=relation.template,
            new_object=change.object,
            old_object=old,
            neighbours=tuple(Neighbour(s, t, o) for s, t, o in editing),
            phrasings=relation.phrasings,
        )
        check = EditCheck(
            change_id=change.id,
            relation=relation.id,
            prompt=prompt,
            new_object=change.object,
            old_object=old,
            paraphrases=tuple(p.format(change.subject) for p in relation.paraphrases),
            held_out=tuple((t.format(s), o) for s, t, o in held_out),
        )
        prepared.append(PreparedFact(change, relation, request, check))
    return prepared


def retention_facts(
    store: StateStore,
    catalog: RelationCatalog,
    *,
    exclude: set[tuple[str, str]],
    sample: int,
    seed: int,
    applied_by: Collection[str] | None = None,
) -> list[AppliedFact]:
    """Facts applied by earlier versions, to re-check (``probes_of``); ``sample`` 0
    takes all.

    ``applied_by`` keeps only facts that these versions applied. A sample is drawn in the
    store (``StateStore.sample_applied``), so its cost follows ``sample``, not the facts
    applied; taking all reads them all, or those ``applied_by`` names.
    """

    def usable(fact: AppliedFact) -> bool:
        return (catalog.resolve(fact.relation) is not None
                and (fact.subject, fact.relation) not in exclude
                and (applied_by is None or fact.version_id in applied_by))

    if sample:
        return store.sample_applied(size=sample, seed=seed, keep=usable)
    every = store.applied_facts() if applied_by is None else store.applied_by(applied_by)
    return [f for f in every if usable(f)]


def probes_of(catalog: RelationCatalog, facts: Sequence[AppliedFact]) -> list[Prompted]:
    """``facts`` as (prompt, object); their relations must be in ``catalog``."""
    return [(_relation(catalog, f.relation).template.format(f.subject), f.object)
            for f in facts]


def neighbour_candidates(
    store: StateStore,
    change: FactChange,
    old: str | None,
    *,
    limit: int,
    exclude: set[tuple[str, str]],
) -> list[KnownFact]:
    """At most ``limit`` facts to try as neighbours of ``change``, from the store only.

    Facts of the same relation whose object is ``old`` (case-folded), by subject,
    alternate with the subject's facts of other relations, by relation; facts in
    ``exclude`` (the job's own) never come back.
    """
    skip = exclude | {(change.subject, change.relation)}
    same_object = (store.facts_with_object(relation=change.relation, object=old, limit=limit,
                                           exclude=skip) if old else [])
    same_subject = [f for f in store.facts_about(subject=change.subject)
                    if (f.subject, f.relation) not in skip]
    return _interleave(same_object, same_subject)[:limit]


def contrast_candidates(
    store: StateStore, change: FactChange, old: str | None, policy: Policy, *,
    exclude: set[tuple[str, str]],
) -> list[KnownFact]:
    """Facts to try as contrast neighbours of ``change``: of its relation, one per
    object other than ``old`` and the new object, from the store only; none when the
    policy holds no contrast neighbours."""
    wanted = policy.editing.contrast_neighbours if policy.editing.neighbours else 0
    if not wanted:
        return []
    return store.facts_with_other_objects(
        relation=change.relation, objects=[o for o in (old, change.object) if o],
        after=change.object, limit=CANDIDATES_PER_SLOT * wanted,
        exclude=exclude | {(change.subject, change.relation)})


def _relation(catalog: RelationCatalog, relation_id: str) -> Relation:
    relation = catalog.resolve(relation_id)
    if relation is None:
        raise ValueError(f"relation {relation_id} is not in the catalog")
    return relation


def _neighbours(
    loaded: LoadedModel,
    catalog: RelationCatalog,
    policy: Policy,
    candidates: Sequence[KnownFact],
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(editing, held-out) neighbours as (subject, template, object): the ``candidates``
    the live model gets right, split between the two."""
    editing_wanted = policy.editing.max_neighbours if policy.editing.neighbours else 0
    held_wanted = policy.evaluation.held_out_neighbours
    editing, held_out = [], []
    # alternate, so both sets get both kinds
    for index, candidate in enumerate(_known(loaded, catalog, candidates)):
        wants_edit = len(editing) < editing_wanted
        wants_held = len(held_out) < held_wanted
        if wants_edit and (index % 2 == 0 or not wants_held):
            editing.append(candidate)
        elif wants_held:
            held_out.append(candidate)
    return editing, held_out


def _known(loaded: LoadedModel, catalog: RelationCatalog,
           facts: Sequence[KnownFact]) -> list[tuple[str, str, str]]:
    """The ``facts`` of catalogued relations the live model gets right, as (subject,
    template, object)."""
    with_templates = []
    for fact in facts:
        relation = catalog.resolve(fact.relation)
        if relation is not None:
            with_templates.append((fact.subject, relation.template, fact.object))
    right = states(loaded, [(t.format(s), o) for s, t, o in with_templates])
    return [c for c, ok in zip(with_templates, right, strict=True) if ok]


def _interleave(first: list, second: list) -> list:
    merged = []
    for index in range(max(len(first), len(second))):
        merged += [items[index] for items in (first, second) if index < len(items)]
    return merged
