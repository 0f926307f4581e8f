"""The benchmark datasets and what differs between them, as data.

Each entry says where the shared copy lives, how its records load, whose neighbourhood
gives a case its editing neighbours and how its records are scored (see
``record_scores``). Nothing here loads a model, so the command line can list the
datasets cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from factsync.evaluation.cases import EvalCase
from factsync.evaluation.counterfact import SHARED_COUNTERFACT, default_data_dir, load_counterfact
from factsync.evaluation.zsre import SHARED_ZSRE, load_zsre
from factsync.kpis.report import FACT_METRICS, Metric


@dataclass(frozen=True)
class Dataset:
    """One benchmark dataset.

    Attributes:
        name: as ``--dataset`` spells it.
        title: as its authors spell it, for people to read.
        shared_file: its file under the shared data directory.
        load: ``load(path, limit=...)`` reads up to ``limit`` cases of a file.
        borrows_neighbours: a case takes its editing neighbours from the neighbourhood of
            a spare record (one read past the edited ones) instead of its own, which is
            all it is scored on.
        token_accuracy: accuracy is the share of the object's tokens that are the
            argmax, rather than whether all of them are.
        neighbourhood_reference: neighbourhood accuracy compares the argmax with the
            unedited model's, and neighbourhood success is defined; otherwise accuracy
            compares the argmax with the neighbourhood object's tokens.
    """

    name: str
    title: str
    shared_file: Path
    load: Callable[..., list[EvalCase]]
    borrows_neighbours: bool
    token_accuracy: bool
    neighbourhood_reference: bool

    @property
    def metrics(self) -> tuple[str, ...]:
        """The names of the metrics this dataset reports, in ``FACT_METRICS`` order."""
        return tuple(
            m.value
            for m in FACT_METRICS
            if self.neighbourhood_reference or m is not Metric.NEIGHBOURHOOD_SUCCESS
        )


_DATASETS = {
    # Each record's own neighbourhood samples are its editing candidates.
    "counterfact": Dataset("counterfact", "COUNTERFACT", SHARED_COUNTERFACT, load_counterfact,
                           borrows_neighbours=False, token_accuracy=False,
                           neighbourhood_reference=True),
    # A ZsRE record has one neighbourhood prompt, the one it is scored on, so its
    # editing neighbour is a spare record's.
    "zsre": Dataset("zsre", "ZsRE", SHARED_ZSRE, load_zsre,
                    borrows_neighbours=True, token_accuracy=True, neighbourhood_reference=False),
}

DATASETS = tuple(_DATASETS)
"""Every dataset name, as ``--dataset`` spells it."""


def dataset_spec(name: str) -> Dataset:
    """The dataset called ``name``; ``ValueError`` naming the choices when none is."""
    try:
        return _DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}") from None


def load_cases(dataset: str, path: Path, *, limit: int | None = None) -> list[EvalCase]:
    """Read up to ``limit`` cases of ``dataset`` from ``path``."""
    return dataset_spec(dataset).load(path, limit=limit)


def default_dataset_path(dataset: str) -> Path | None:
    """``dataset``'s file under ``../shared/data`` beside the checkout, when present."""
    relative = dataset_spec(dataset).shared_file
    shared = default_data_dir(relative)
    return None if shared is None else shared / relative
