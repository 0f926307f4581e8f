"""``factsync bench serving``: does what serving engines load carry every applied fact?

Records are applied in sequential jobs through the daemon's own parts: a state store,
the owner of the live version, and the exporter with its verification and folds, run
after every promotion as the daemon runs it, each export verified on the probes the
daemon picks (``verification_probes``: the facts it adds and ``verify_sample`` others),
with merged checkpoints on so they can be scored too. After the last job, the edit
success and paraphrase success of every applied fact are measured three ways: on the
live model in memory, on the current adapter loaded with PEFT on its serving base, and
on the current merged checkpoint.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client import CollectorRegistry
from tqdm import tqdm

from factsync.daemon.alerts import Alerter
from factsync.daemon.config import ExportConfig
from factsync.daemon.export_verification import (
    ADAPTER,
    MERGED,
    ExportVerifier,
    load_exported,
    verification_probes,
)
from factsync.daemon.exporting import Exporter
from factsync.daemon.metrics import Metrics
from factsync.editing.engine import EditEngine
from factsync.evaluation.suites import Suite
from factsync.facts.catalog import Relation, RelationCatalog
from factsync.facts.records import FactRecord
from factsync.jobs.live import LiveVersion, Promotion
from factsync.jobs.model_state import ModelState
from factsync.models.loading import LoadedModel, load_model
from factsync.registry.exports import ExportDir, adapter_base, adapter_rank
from factsync.registry.versions import VersionFiles
from factsync.store.store import StateStore

SCORES = ("edit_success", "paraphrase_success")


@dataclass
class ServingWorkspace:
    """The daemon parts one run drives, in a data directory of its own."""

    store: StateStore
    models: ModelState
    live: LiveVersion
    exports: ExportDir
    exporter: Exporter


def open_workspace(loaded: LoadedModel, engine: EditEngine, directory: Path, *,
                   base_model: Path, settings: ExportConfig,
                   catalog: RelationCatalog) -> ServingWorkspace:
    """A fresh store, version files and exports under ``directory``; when
    ``settings.verify``, exports are verified as the daemon verifies them, on facts whose
    relations ``catalog`` resolves."""
    store = StateStore(directory / "state.sqlite")
    versions = VersionFiles(directory / "versions")
    models = ModelState(loaded)
    metrics = Metrics(CollectorRegistry())
    exports = ExportDir(directory / "exports")
    seeds = itertools.count()
    verifier = ExportVerifier(
        device=str(loaded.device), dtype=_dtype(loaded), tolerance=settings.verify_tolerance,
        probes=lambda version, served: verification_probes(
            store, catalog, version=version, served=served, sample=settings.verify_sample,
            seed=next(seeds)),
    ) if settings.verify else None
    exporter = Exporter(settings=settings, exports=exports, versions=versions, store=store,
                        models=models, base_model=str(base_model), notifiers=[],
                        alerter=Alerter([], metrics), metrics=metrics, verifier=verifier)
    live = LiveVersion(store=store, versions=versions, models=models, engine=engine)
    return ServingWorkspace(store, models, live, exports, exporter)


def run_serving(loaded: LoadedModel, engine: EditEngine, suite: Suite, *, batch: int,
                directory: Path, base_model: Path, settings: ExportConfig) -> dict:
    """Apply ``suite``'s records in jobs of ``batch``, exporting after each, and score
    the live model, the served adapter and the merged checkpoint on every record.

    Returns the JSON of ``factsync bench serving`` (see the module docstring).
    """
    space = open_workspace(loaded, engine, directory, base_model=base_model,
                           settings=replace(settings, merged=True),
                           catalog=_template_catalog(suite))
    export_seconds: list[float] = []
    verify_seconds: list[float] = []
    probes: list[int] = []
    jobs = range(0, len(suite.requests), batch)
    try:
        for start in tqdm(jobs, desc="serving", unit="job"):
            requests = suite.requests[start:start + batch]
            _promote(space, engine, requests, first_case=start)
            started = time.monotonic()
            summary = space.exporter.export_live("promoted") or {}
            export_seconds.append(time.monotonic() - started)
            verify_seconds.append(summary.get("verify_seconds", 0.0))
            verdicts = summary.get("verification", {}).values()  # the same probes each
            probes.append(max((v["probes"] for v in verdicts), default=0))
    finally:
        space.exporter.close()
    live_scores = _scores(suite, space.models.serving)
    live_version = space.store.live_version().id
    base, adapter = _serving_artifacts(space, live_version, base_model)
    device, dtype = str(loaded.device), _dtype(loaded)
    served = (load_exported(ADAPTER, adapter, base=Path(base), device=device, dtype=dtype)
              if adapter else load_model(Path(base), device=device, dtype=dtype))
    merged_dir = space.exports.current(MERGED)
    merged = load_exported(MERGED, merged_dir, base=base_model, device=device,
                           dtype=dtype) if merged_dir else None
    return {
        "n": len(suite.requests), "batch": batch, "max_rank": settings.max_rank,
        "live": live_scores | {"version": live_version},
        "adapter": _scores(suite, served) | {
            "rank": adapter_rank(adapter) if adapter else 0,
            "version": adapter.name if adapter else None, "base": base},
        "merged": (_scores(suite, merged) if merged else dict.fromkeys(SCORES)) | {
            "version": merged_dir.name if merged_dir else None},
        "folds": len(space.store.folds()),
        "export_seconds": {"first": export_seconds[0], "last": export_seconds[-1],
                           "each": export_seconds, "verifying": verify_seconds,
                           "probes": probes},
    }


def _promote(space: ServingWorkspace, engine: EditEngine, requests: list, first_case: int) -> None:
    """Edit ``requests`` as one job and promote the result, as the daemon's worker does
    once the gates pass (this bench has none)."""
    store = space.store
    changes = [store.record_desired(
        record=FactRecord(r.subject, r.template, r.new_object, "bench", f"record {first_case + i}"),
        relation=r.template) for i, r in enumerate(requests)]
    job = store.create_job(change_ids=[c.id for c in changes if c], policy_digest="bench")
    result = engine.edit(requests)
    result.delta.apply(space.models.work)
    space.live.promote(Promotion(
        job=job, result=result, facts=[{"subject": r.subject, "template": r.template}
                                       for r in requests],
        applied={c.id: r.old_object for c, r in zip(changes, requests, strict=True) if c},
        report={}, policy_digest="bench"))


def _template_catalog(suite: Suite) -> RelationCatalog:
    """The bench records each fact under its record's template as the relation; this
    catalog resolves those names to themselves, as the daemon's resolves relation ids."""
    templates = dict.fromkeys(r.template for r in suite.requests)
    return RelationCatalog(Relation(id=t, alias=t, template=t) for t in templates)


def _serving_artifacts(space: ServingWorkspace, version: str,
                       base_model: Path) -> tuple[str, Path | None]:
    """The base and the adapter an engine serves ``version`` from: a folded version's
    checkpoint alone, or the current adapter on the base it names."""
    fold = space.store.folds().get(version)
    if fold is not None:
        return fold.checkpoint, None
    adapter = space.exports.current(ADAPTER)
    if adapter is None:
        return str(base_model), None
    return str(adapter_base(adapter)), adapter


def _scores(suite: Suite, loaded: LoadedModel) -> dict[str, float]:
    values = suite.score(loaded)
    return {"edit_success": _mean(values["efficacy_success"]),
            "paraphrase_success": _mean(values["paraphrase_success"])}


def _mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else float("nan")


def _dtype(loaded: LoadedModel) -> str:
    return str(loaded.model.dtype).removeprefix("torch.")


def format_serving(result: dict) -> str:
    """The bench's table: scores of each artifact, then rank, folds and export time."""
    lines = [f"{'':10} | {'edit_success':>12} | {'paraphrase_success':>18} | version"]
    for name in ("live", "adapter", "merged"):
        row = result[name]
        cells = [f"{row[s]:.3f}" if row[s] is not None else "-" for s in SCORES]
        lines.append(f"{name:10} | {cells[0]:>12} | {cells[1]:>18} | {row['version']}")
    seconds = result["export_seconds"]
    lines.append(f"adapter rank {result['adapter']['rank']} (budget {result['max_rank']}) on "
                 f"{result['adapter']['base']}; folds {result['folds']}")
    lines.append("export seconds per job (verifying, probes): " + ", ".join(
        f"{total:.1f} ({verifying:.1f}, {count})" for total, verifying, count in
        zip(seconds["each"], seconds["verifying"], seconds["probes"], strict=True)))
    return "\n".join(lines)
