"""``factsync export verify``: check a version's exports against the model they carry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from factsync.daemon.config import load_config
from factsync.daemon.export_verification import ADAPTER, MERGED, Verification, verify_export
from factsync.daemon.service import STATE_FILE, model_dir, relation_catalog
from factsync.editing.delta import ModelDelta
from factsync.jobs.canaries import choose_canaries
from factsync.jobs.preparation import probes_of, retention_facts, states
from factsync.models.loading import load_model
from factsync.models.precision import keep_edit_layers_in_float32
from factsync.policies.schema import Policy, load_policy
from factsync.registry.exports import ExportDir, adapter_base
from factsync.registry.versions import VersionFiles
from factsync.store.store import StateStore

DIVERGED = 3
"""Exit status when an export does not answer like the model it carries."""


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``factsync export``."""
    parser = commands.add_parser("export", help="check the exports serving engines load")
    sub = parser.add_subparsers(dest="export_command", required=True)
    verify = sub.add_parser(
        "verify",
        help="compare a version's exported adapter and merged checkpoint with its model",
        description="Rebuild VERSION (the live one by default) from the base model plus its "
        "deltas, load its exports as a serving engine would (the adapter with PEFT on the "
        "base model, the merged checkpoint with from_pretrained), and print, for each fact "
        "that version applied and each canary, whether the rebuilt model and each export "
        "answer it with its object. Exits 3 when an export differs on more than the "
        "config's export.verify_tolerance of them (1 on errors). Works whether or not the "
        "daemon runs.",
    )
    verify.add_argument("version", nargs="?", help="the version to check (default: live)")
    verify.add_argument("--config", type=Path, help="the daemon's YAML configuration")
    verify.add_argument("--data-dir", type=Path, help="data directory (overrides --config)")
    verify.add_argument("--all", action="store_true",
                        help="list every probe, not only those answered differently")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=run_verify, computes=True)


def run_verify(args: argparse.Namespace) -> int:
    """Handler of ``factsync export verify``."""
    config = load_config(args.config)
    data_dir = args.data_dir or config.state_dir
    if not (data_dir / STATE_FILE).is_file():
        raise ValueError(f"no factsync state in {data_dir} (missing {STATE_FILE})")
    store = StateStore(data_dir / STATE_FILE, read_only=True)
    version = args.version or store.live_version().id
    lineage = store.lineage(version_id=version)
    exports = ExportDir(data_dir / "exports")
    found = {kind: exports.root / kind / version for kind in (ADAPTER, MERGED)
             if (exports.root / kind / version).is_dir()}
    if not found:
        raise ValueError(f"version {version} has no exports under {exports.root}")

    catalog = relation_catalog(config)
    base = model_dir(config)
    model = load_model(base, device=config.model.device, dtype=config.model.dtype)
    policy = load_policy(config.policy) if config.policy else Policy()
    keep_edit_layers_in_float32(model, policy.editing.engine_settings().layers)  # as live
    canaries = choose_canaries(model, store, catalog)
    versions = VersionFiles(data_dir / "versions")
    for step in lineage:
        ModelDelta.load(versions.delta_path(step.id)).apply(model)
    probes = probes_of(catalog, retention_facts(store, catalog, exclude=set(), sample=0,
                                                seed=0, applied_by={v.id for v in lineage}))
    probes += canaries
    live = states(model, probes)
    del model
    verdicts = [verify_export(kind, version, path, probes, live,
                              base=adapter_base(path) if kind == ADAPTER else base,
                              device=config.model.device, dtype=config.model.dtype,
                              tolerance=config.export.verify_tolerance)
                for kind, path in found.items()]
    if args.json:
        print(json.dumps([v.summary(limit=len(v.answers)) for v in verdicts], indent=2))
    else:
        print("\n".join(_table(verdicts, show_all=args.all)))
    return 0 if all(v.passed for v in verdicts) else DIVERGED


def _table(verdicts: list[Verification], *, show_all: bool) -> list[str]:
    """Per probe, whether the version's model and each export answer it; then totals."""
    kinds = [v.kind for v in verdicts]
    lines = [" | ".join(["prompt -> object".ljust(60), "model", *kinds])]
    for row, answer in enumerate(verdicts[0].answers):
        exported = [v.answers[row].exported for v in verdicts]
        if show_all or any(e != answer.live for e in exported):
            cells = [f"{answer.prompt} -> {answer.object.strip()}"[:60].ljust(60),
                     _yes(answer.live).ljust(len("model")),
                     *(_yes(e).ljust(len(k)) for e, k in zip(exported, kinds, strict=True))]
            lines.append(" | ".join(cells))
    for verdict in verdicts:
        verdict_word = "passes" if verdict.passed else "DIVERGES"
        lines.append(f"{verdict.kind} of {verdict.version}: {verdict_word}; answers "
                     f"{len(verdict.answers) - len(verdict.differing)} of "
                     f"{len(verdict.answers)} probes like the model "
                     f"(agreement {verdict.agreement:.3f}, tolerance {verdict.tolerance:g})")
    return lines


def _yes(value: bool) -> str:
    return "yes" if value else "no"
