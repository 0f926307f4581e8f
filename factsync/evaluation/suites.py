"""Benchmark suites: a dataset's cases, prepared on the unedited model, scored per record.

``prepare_suite`` runs once on the unedited model: it chooses each case's NME editing
neighbours (``neighbours``), leaves every prompt any case edits with out of every
case's neighbourhood scoring, and records the unedited predictions that neighbourhood
accuracy compares with. ``Suite.score`` then scores the model as it is, one value per
record and metric (``record_scores``), which bootstrap intervals need.

COUNTERFACT cases edit with their own neighbourhood samples. A ZsRE record has one
neighbourhood prompt, the ``loc`` question it is scored on, so its editing neighbour
comes from a spare record, one past the edited ones that is neither edited nor scored:
case ``i`` borrows from spare record ``i mod len(spare)``. Without spare records ZsRE
cases edit without neighbours, since lending a scored question would take it out of the
scoring (and leave the questions the model does not know to be scored).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from factsync.editing.requests import EditRequest
from factsync.evaluation.cases import EvalCase
from factsync.evaluation.contrast import contrast_offers
from factsync.evaluation.datasets import (
    DATASETS,
    Dataset,
    dataset_spec,
    default_dataset_path,
    load_cases,
)
from factsync.evaluation.neighbours import NeighbourSplit, split_neighbours
from factsync.evaluation.record_scores import (
    RecordProbe,
    Reference,
    neighbourhood_reference,
    score_records,
)
from factsync.models.loading import LoadedModel

__all__ = [
    "DATASETS",
    "EvalCase",
    "Suite",
    "assemble_suite",
    "default_dataset_path",
    "load_cases",
    "prepare_suite",
]

log = logging.getLogger(__name__)

CONTRAST_CANDIDATES = 4
"""Contrast candidates tried per contrast neighbour wanted: some are facts the unedited
model gets wrong."""


@dataclass
class Suite:
    """A dataset's cases, ready to edit and to score.

    Attributes:
        dataset: the dataset's name, one of ``DATASETS``.
        cases: the cases as loaded.
        requests: per case, its request with its NME editing neighbours attached.
        probes: per case, what is scored: its prompts and its neighbourhood without any
            prompt that a case edits with.
        reference: the unedited model's predictions on the scored neighbourhood, for
            datasets that judge the neighbourhood against them (empty otherwise).
    """

    dataset: str
    cases: list[EvalCase]
    requests: list[EditRequest]
    probes: list[RecordProbe] = field(repr=False)
    reference: Reference = field(repr=False)

    def score(
        self, loaded: LoadedModel, indices: Sequence[int] | None = None
    ) -> dict[str, list[float | None]]:
        """Score the model as it is now on the cases at ``indices`` (default: all).

        Per metric name (all six, whichever the dataset), one value per scored case in
        ``indices`` order; ``None`` where the case has nothing of that kind.
        """
        chosen = range(len(self.cases)) if indices is None else indices
        probes = [self.probes[i] for i in chosen]
        return score_records(loaded, probes, dataset_spec(self.dataset), self.reference)

    def score_changed_back(
        self, loaded: LoadedModel, indices: Sequence[int]
    ) -> dict[str, list[float | None]]:
        """``score`` for the cases at ``indices`` after their facts were changed back to
        their old objects: prompts and paraphrases are scored with the two objects
        swapped, the neighbourhood as before (it must still keep what it knew)."""
        as_before = self.score(loaded, indices)
        swapped = [RecordProbe(self.probes[i].request.reverted(), self.probes[i].paraphrases)
                   for i in indices]
        own = score_records(loaded, swapped, dataset_spec(self.dataset), self.reference)
        return {metric: values if metric.startswith("neighbourhood") else own[metric]
                for metric, values in as_before.items()}

    def metrics(self) -> tuple[str, ...]:
        """The metric names this dataset reports."""
        return dataset_spec(self.dataset).metrics

    @property
    def split(self) -> NeighbourSplit:
        """Per case, the neighbours it edits with and the neighbourhood it is scored on."""
        return NeighbourSplit(editing=[request.neighbours for request in self.requests],
                              scored=[probe.neighbourhood for probe in self.probes])


def prepare_suite(
    loaded: LoadedModel,
    dataset: str,
    cases: list[EvalCase],
    *,
    neighbours_per_fact: int = 1,
    contrast_per_fact: int = 0,
    spare: Sequence[EvalCase] = (),
) -> Suite:
    """Prepare ``cases`` of ``dataset`` on the unedited model ``loaded``.

    ``spare`` are records of the same file that are neither edited nor scored; datasets
    that borrow editing neighbours take them from these. Each case also edits with up
    to ``contrast_per_fact`` contrast neighbours (``contrast``), lent by the spare
    records first and then by the other cases.
    """
    spec = dataset_spec(dataset)
    if not cases:
        raise ValueError("no cases to prepare")
    offers = (contrast_offers(cases, [*spare, *cases], CONTRAST_CANDIDATES * contrast_per_fact)
              if contrast_per_fact else [])
    split = split_neighbours(loaded, cases, _donors(spec, cases, spare), neighbours_per_fact,
                             contrast=offers, contrast_per_fact=contrast_per_fact)
    offered = sum(len({t.format(s) for s, t in case.neighbourhood}) for case in cases)
    log.info(
        "%s: %d of %d cases edit with a neighbour the unedited model gets right; "
        "%d of %d neighbourhood prompts are left to score",
        dataset,
        sum(1 for chosen in split.editing if chosen),
        len(cases),
        sum(len(scored) for scored in split.scored),
        offered,
    )
    suite = assemble_suite(dataset, cases, split, {})
    if spec.neighbourhood_reference:
        suite.reference = neighbourhood_reference(loaded, suite.probes)
    return suite


def assemble_suite(
    dataset: str, cases: list[EvalCase], split: NeighbourSplit, reference: Reference
) -> Suite:
    """The suite of ``cases`` with the neighbours and the unedited predictions that
    ``prepare_suite`` chose (``Suite.split`` and ``Suite.reference`` of a prepared one)."""
    if not len(cases) == len(split.editing) == len(split.scored):
        raise ValueError(f"{len(cases)} cases but neighbours of {len(split.editing)} and "
                         f"a neighbourhood of {len(split.scored)}")
    requests = [
        replace(case.request, neighbours=tuple(chosen))
        for case, chosen in zip(cases, split.editing, strict=True)
    ]
    probes = [
        RecordProbe(case.request, case.paraphrases, tuple(scored))
        for case, scored in zip(cases, split.scored, strict=True)
    ]
    return Suite(dataset, cases, requests, probes, reference)


def _donors(
    spec: Dataset, cases: list[EvalCase], spare: Sequence[EvalCase]
) -> list[EvalCase | None]:
    """Per case, the record whose neighbourhood offers it editing neighbours, if any."""
    if not spec.borrows_neighbours:
        return list(cases)
    if not spare:
        log.warning("%s: no spare records to lend editing neighbours; cases edit without "
                    "them (read more records than are edited to have some)", spec.name)
        return [None] * len(cases)
    return [spare[i % len(spare)] for i in range(len(cases))]
