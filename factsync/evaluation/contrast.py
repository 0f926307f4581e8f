"""Contrast neighbours: facts of an edit's relation that hold other objects.

A COUNTERFACT record's own neighbourhood shares its true object ("The official language
of Fiji is" English, for Montana's English -> Italian). Holding those keeps the edit off
subjects that answer like the old subject, but not off subjects of the same relation that
answer otherwise: over a long stream the rewrites of one relation pull its other facts
("The official language of Japan is" Japanese) toward the new objects. A contrast
neighbour is such a fact, taken from another record of the same relation whose true
object is neither the edit's old nor its new object: one of that record's neighbourhood
facts, which the unedited model is then asked to get right like any editing neighbour.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from factsync.editing.requests import Neighbour
from factsync.evaluation.cases import EvalCase


def contrast_offers(
    cases: Sequence[EvalCase], pool: Sequence[EvalCase], limit: int
) -> list[tuple[Neighbour, ...]]:
    """Per case, up to ``limit`` candidate contrast neighbours from the records of ``pool``.

    The candidates of a case are the first neighbourhood facts of pool records with its
    relation and another true object (compared case-folded with its old and new
    objects), one per record, about other subjects than its own. Each case starts at
    another place in its relation's records, so one record does not lend to every case.
    A case without a relation, or ``limit`` 0, gets none.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    by_relation: dict[str, list[EvalCase]] = defaultdict(list)
    for record in pool:
        if record.relation is not None:
            by_relation[record.relation].append(record)
    offers = []
    for index, case in enumerate(cases):
        records = by_relation.get(case.relation, []) if case.relation and limit else []
        request = case.request
        answers = {request.new_object.casefold(), (request.old_object or "").casefold()}
        donors = [r for r in records if r.case_id != case.case_id
                  and (r.request.old_object or "").casefold() not in answers]
        start = index % len(donors) if donors else 0
        offered: list[Neighbour] = []
        for donor in donors[start:] + donors[:start]:
            fact = next((f for f in donor.neighbourhood_facts()
                         if f.subject != request.subject), None)
            if fact is not None:
                offered.append(fact)
            if len(offered) == limit:
                break
        offers.append(tuple(offered))
    return offers
