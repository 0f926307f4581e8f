"""The unedited side of a ``bench lifelong`` run, kept for later runs of the same records.

Before its first job a run prepares its records on the unedited model (each case's
editing neighbours, the neighbourhood left to score and the unedited predictions on it,
the canaries the model knows, the texts' NLLs) and then measures the unedited model over
every record. For 1,000 COUNTERFACT records that takes about 25 minutes on a 2-core CPU,
and none of it depends on the methods. ``PreparedRuns`` keeps it, one JSON file per
model, records, texts and sizes, so that a run of other methods over the same records,
or a stopped run continued, goes straight to its first job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from factsync.bench.lifelong_scoring import Checkpoint, Yardstick
from factsync.durable import write_json
from factsync.editing.requests import EditRequest, Neighbour
from factsync.evaluation.cases import EvalCase
from factsync.evaluation.neighbours import NeighbourSplit
from factsync.evaluation.suites import assemble_suite
from factsync.paths import data_home

log = logging.getLogger(__name__)

FORMAT = 2
"""The kind of file written; raise it when what preparing chooses changes, so that files
of the old kind are prepared again instead of read."""


@dataclass(frozen=True)
class PreparationInputs:
    """Everything a run's preparation and unedited measurement depend on.

    Attributes:
        fingerprint: the model's (``LoadedModel.fingerprint``).
        device: the kind of device the model runs on (``"cpu"``, ``"cuda"``).
        dtype: the dtype the model runs in.
        dataset: the records' dataset.
        cases: the records edited, in order.
        neighbours: NME editing neighbours per fact.
        canary_candidates: the records after the edited ones that may be canaries.
        fluency_texts: the texts of the perplexity ratio.
        held_out_texts: the texts of the held-out perplexity ratio (may be none).
        seed: the bootstrap seed of the intervals.
        contrast: contrast neighbours per fact (``evaluation.contrast``).
    """

    fingerprint: str
    device: str
    dtype: str
    dataset: str
    cases: list[EvalCase]
    neighbours: int
    canary_candidates: list[EditRequest]
    fluency_texts: list[str]
    held_out_texts: list[str]
    seed: int
    contrast: int = 0

    def key(self) -> dict[str, object]:
        """What a kept preparation must match, with the records and texts as digests."""
        return {
            "format": FORMAT, "fingerprint": self.fingerprint, "device": self.device,
            "dtype": self.dtype,
            "dataset": self.dataset, "n": len(self.cases), "neighbours": self.neighbours,
            "contrast": self.contrast,
            "seed": self.seed, "records": _digest(repr(self.cases)),
            "canary_candidates": _digest(repr(self.canary_candidates)),
            "fluency_texts": _digest(json.dumps(self.fluency_texts)),
            "held_out_texts": _digest(json.dumps(self.held_out_texts)),
        }


@dataclass(frozen=True)
class Preparation:
    """What a run measures before its first job: its yardstick, and the unedited model
    measured with it over every record."""

    yardstick: Yardstick
    unedited: Checkpoint


class PreparedRuns:
    """Preparations of ``bench lifelong`` runs in ``directory``, by default
    ``data_home()/bench/prepared``."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else (
            data_home() / "bench" / "prepared")

    def path(self, inputs: PreparationInputs) -> Path:
        """The file that holds (or would hold) the preparation of ``inputs``."""
        return self.directory / f"{_digest(json.dumps(inputs.key(), sort_keys=True))}.json"

    def load(self, inputs: PreparationInputs) -> Preparation | None:
        """The preparation kept for ``inputs``, or ``None`` when there is none.

        A file that cannot be read, or that was kept for other inputs, is logged at
        WARNING and taken as none.
        """
        path = self.path(inputs)
        if not path.exists():
            return None
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("key") != inputs.key():
                raise ValueError("it was kept for other records, texts or settings")
            preparation = _preparation(saved, inputs)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("preparing the records again: cannot use %s (%s)", path, exc)
            return None
        log.info("reusing the records prepared on the unedited model from %s", path)
        return preparation

    def save(self, inputs: PreparationInputs, preparation: Preparation) -> Path:
        """Keep ``preparation``, made from ``inputs``, for later runs; its file."""
        yardstick = preparation.yardstick
        split = yardstick.suite.split
        path = self.path(inputs)
        write_json(path, {
            "key": inputs.key(),
            "editing": [[[n.subject, n.template, n.object] for n in chosen]
                        for chosen in split.editing],
            "scored": [[list(pair) for pair in scored] for scored in split.scored],
            "reference": [[prompt, obj, list(ids)]
                          for (prompt, obj), ids in yardstick.suite.reference.items()],
            "canaries": [inputs.canary_candidates.index(c) for c in yardstick.canaries],
            "stated_canaries": [list(pair) for pair in yardstick.stated_canaries],
            "base_nlls": [list(pair) for pair in yardstick.base_nlls],
            "held_out_base_nlls": [list(pair) for pair in yardstick.held_out_base_nlls],
            "unedited": preparation.unedited.to_json(),
        })
        log.info("kept the records prepared on the unedited model in %s", path)
        return path


def _preparation(saved: dict, inputs: PreparationInputs) -> Preparation:
    """The preparation of ``inputs`` that ``PreparedRuns.save`` wrote as ``saved``."""
    split = NeighbourSplit(
        editing=[tuple(Neighbour(*fact) for fact in chosen) for chosen in saved["editing"]],
        scored=[tuple((prompt, obj) for prompt, obj in scored) for scored in saved["scored"]])
    reference = {(prompt, obj): tuple(ids) for prompt, obj, ids in saved["reference"]}
    suite = assemble_suite(inputs.dataset, inputs.cases, split, reference)
    yardstick = Yardstick(
        suite=suite,
        canaries=[inputs.canary_candidates[i] for i in saved["canaries"]],
        fluency_texts=inputs.fluency_texts,
        base_nlls=[(nll, count) for nll, count in saved["base_nlls"]],
        seed=inputs.seed,
        stated_canaries=[(prompt, obj) for prompt, obj in saved["stated_canaries"]],
        held_out_texts=inputs.held_out_texts,
        held_out_base_nlls=[(nll, count) for nll, count in saved["held_out_base_nlls"]],
    )
    return Preparation(yardstick, Checkpoint.from_json(saved["unedited"]))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
