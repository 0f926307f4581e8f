"""Verified exports: an export counts only if, loaded as a serving engine loads it, it
answers like the live model.

The adapter is loaded with PEFT on a fresh copy of the base model, the merged checkpoint
with ``from_pretrained``. Both are asked the same probes as the live model (the live
version's applied facts and the canaries): does the greedy answer, teacher forced, equal
the fact's object? An export passes when no more than ``tolerance`` of the probes get a
different answer from the live model's.

The probes of one export are what it adds and a sample of what it keeps
(``verification_probes``), so verifying costs the same at the thousandth fact as at the
tenth.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from factsync.evaluation.kpis import Prompted
from factsync.facts.catalog import RelationCatalog
from factsync.jobs.preparation import probes_of, retention_facts, states
from factsync.models.loading import LoadedModel, load_model
from factsync.store.store import StateStore

ADAPTER = "adapter"
MERGED = "merged"
BASE = "base"  # a folded version's checkpoint, the serving base of the adapters after it


@dataclass(frozen=True)
class ProbeAnswer:
    """One probe, as the live model and the export answer it.

    Attributes:
        prompt: the prompt.
        object: the object it should be answered with.
        live: whether the live model answers with ``object``.
        exported: whether the export does.
    """

    prompt: str
    object: str
    live: bool
    exported: bool


@dataclass(frozen=True)
class Verification:
    """The verdict on one export.

    Attributes:
        kind: ``adapter`` or ``merged``.
        version: the version exported.
        answers: every probe's answers.
        tolerance: the share of probes allowed to differ.
    """

    kind: str
    version: str
    answers: tuple[ProbeAnswer, ...]
    tolerance: float

    @property
    def differing(self) -> list[ProbeAnswer]:
        """The probes the export answers differently from the live model."""
        return [a for a in self.answers if a.live != a.exported]

    @property
    def agreement(self) -> float:
        """Share of probes answered alike (1 when there are none)."""
        return 1 - len(self.differing) / len(self.answers) if self.answers else 1.0

    @property
    def passed(self) -> bool:
        """Whether no more than ``tolerance`` of the probes differ."""
        return len(self.differing) <= self.tolerance * len(self.answers)

    def summary(self, limit: int = 20) -> dict:
        """A JSON-ready account: agreement, verdict and up to ``limit`` differing probes."""
        return {
            "kind": self.kind, "version": self.version, "probes": len(self.answers),
            "agreement": round(self.agreement, 6), "tolerance": self.tolerance,
            "passed": self.passed,
            "differing": [{"prompt": a.prompt, "object": a.object, "live": a.live,
                           "exported": a.exported} for a in self.differing[:limit]],
        }


def unserved_versions(store: StateStore, version: str, served: str | None) -> set[str]:
    """The versions in ``version``'s lineage that the ``served`` one does not carry.

    Walks back from ``version`` until it meets ``served``: usually the one or few
    versions promoted since the last export. After a rollback ``served`` is not an
    ancestor, and every version of the lineage it lacks is counted.
    """
    unserved: set[str] = set()
    step = store.version(version_id=version)
    while step.parent_id is not None and step.id != served:
        unserved.add(step.id)
        step = store.version(version_id=step.parent_id)
    if served is not None and step.id != served:
        unserved -= {v.id for v in store.lineage(version_id=served)}
    return unserved


def verification_probes(store: StateStore, catalog: RelationCatalog, *, version: str,
                        served: str | None, sample: int, seed: int) -> list[Prompted]:
    """The applied facts an export of ``version`` is checked on, as (prompt, object).

    Every fact that the versions serving engines lack yet applied (what the export adds
    over ``served``), and ``sample`` facts drawn from all applied ones (what it should
    keep; 0 takes them all). Drawn with a new ``seed`` each export, the samples cover
    every fact in time, at a cost that follows the facts since the last export and
    ``sample``, not the history.
    """
    added = probes_of(catalog, retention_facts(
        store, catalog, exclude=set(), sample=0, seed=seed,
        applied_by=unserved_versions(store, version, served)))
    kept = probes_of(catalog, retention_facts(store, catalog, exclude=set(), sample=sample,
                                              seed=seed))
    return list(dict.fromkeys(added + kept))


def load_exported(kind: str, directory: Path, *, base: Path, device: str,
                  dtype: str) -> LoadedModel:
    """The export in ``directory`` loaded the way a serving engine loads it."""
    if kind == MERGED:
        return load_model(directory, device=device, dtype=dtype)
    if kind != ADAPTER:
        raise ValueError(f"unknown export kind {kind!r}")
    from peft import PeftModel  # imported here: only exports need it

    loaded = load_model(base, device=device, dtype=dtype)
    wrapped = PeftModel.from_pretrained(loaded.model, directory).eval()
    # PEFT swaps its LoRA layers into the causal LM it wraps (unmerged, as engines serve
    # them); scoring wants that model itself, for its decoder stack and output embeddings.
    return replace(loaded, model=wrapped.get_base_model())


def compare(kind: str, version: str, probes: Sequence[Prompted], live: Sequence[bool],
            exported: LoadedModel, *, tolerance: float) -> Verification:
    """Ask ``exported`` the ``probes`` and set its answers beside the live ones."""
    answers = states(exported, probes)
    return Verification(kind=kind, version=version, tolerance=tolerance, answers=tuple(
        ProbeAnswer(prompt, obj, was, now)
        for (prompt, obj), was, now in zip(probes, live, answers, strict=True)))


def verify_export(kind: str, version: str, directory: Path, probes: Sequence[Prompted],
                  live: Sequence[bool], *, base: Path, device: str, dtype: str,
                  tolerance: float) -> Verification:
    """Load the export in ``directory``, compare it with the live answers, free it."""
    exported = load_exported(kind, directory, base=base, device=device, dtype=dtype)
    try:
        return compare(kind, version, probes, live, exported, tolerance=tolerance)
    finally:
        del exported
        gc.collect()


@dataclass(frozen=True)
class ExportVerifier:
    """What verifying the daemon's exports needs.

    Attributes:
        device: where to load exports.
        dtype: their dtype, the served model's.
        probes: the probes of an export of a version (first argument) when serving
            engines carry another (second argument, ``None`` before the first export):
            ``verification_probes`` and the canaries.
        tolerance: the share of probes an export may answer differently.
    """

    device: str
    dtype: str
    probes: Callable[[str, str | None], list[Prompted]]
    tolerance: float

    def verify(self, kind: str, version: str, directory: Path, probes: Sequence[Prompted],
               live: Sequence[bool], *, base: Path) -> Verification:
        """``verify_export`` with these settings; an adapter is loaded on ``base``."""
        return verify_export(kind, version, directory, probes, live, base=base,
                             device=self.device, dtype=self.dtype, tolerance=self.tolerance)
