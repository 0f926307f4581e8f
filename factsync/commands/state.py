"""``factsync status | facts | jobs | versions``: read the daemon's state."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from factsync.daemon.config import load_config
from factsync.daemon.service import STATE_FILE
from factsync.store.store import StateStore


def register(commands: argparse._SubParsersAction) -> None:
    """Add the read-only state commands."""
    for name, help_text, handler in (
        ("status", "the live version, pending changes and job counts", show_status),
        ("facts", "desired facts with their state and the version that applied them", show_facts),
        ("jobs", "recent jobs with their outcome and reason", show_jobs),
        ("versions", "model versions, newest first, with their KPIs", show_versions),
    ):
        parser = commands.add_parser(
            name, help=help_text,
            description=f"Print {help_text}, read from the state file of the data directory "
            "(works whether or not the daemon runs).",
        )
        parser.add_argument("--config", type=Path, help="the daemon's YAML configuration")
        parser.add_argument("--data-dir", type=Path, help="data directory (overrides --config)")
        parser.add_argument("--json", action="store_true", help="print JSON")
        if name == "facts":
            parser.add_argument("--subject")
            parser.add_argument("--relation")
            parser.add_argument("--state", help="pending, queued, applied, failed...")
        if name == "jobs":
            parser.add_argument("--limit", type=int, default=20)
        parser.set_defaults(handler=handler)


def _store(args: argparse.Namespace) -> StateStore:
    """The data directory's state, opened read-only: these commands never migrate or
    write a file a running daemon owns."""
    data_dir = args.data_dir or load_config(args.config).state_dir
    path = data_dir / STATE_FILE
    if not path.is_file():
        raise ValueError(f"no factsync state in {data_dir} (missing {STATE_FILE})")
    return StateStore(path, read_only=True)


def _print(args: argparse.Namespace, payload: Any, lines: list[str]) -> int:
    print(json.dumps(payload, indent=2, default=str) if args.json else "\n".join(lines))
    return 0


def show_status(args: argparse.Namespace) -> int:
    """Handler of ``factsync status``."""
    store = _store(args)
    live = store.live_version()
    payload = {
        "live_version": {"id": live.id, "seq": live.seq},
        "pending_changes": store.count_changes(states=("pending", "queued")),
        "jobs": store.count_jobs(),
        "quarantined": store.quarantine_count(),
    }
    lines = [
        f"live version: {live.id} (seq {live.seq})",
        f"pending changes: {payload['pending_changes']}",
        "jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(payload["jobs"].items())) or "none"),
        f"quarantined rows: {payload['quarantined']}",
    ]
    return _print(args, payload, lines)


def show_facts(args: argparse.Namespace) -> int:
    """Handler of ``factsync facts``."""
    rows = _store(args).fact_views(subject=args.subject, relation=args.relation,
                                   state=args.state)
    lines = [f"{r['subject']} | {r['relation']} | {r['object']} | {r['state']}"
             + (f" | {r['reason']}" if r["reason"] else "") for r in rows]
    return _print(args, rows, lines or ["no facts"])


def show_jobs(args: argparse.Namespace) -> int:
    """Handler of ``factsync jobs``."""
    store = _store(args)
    jobs = store.jobs(limit=args.limit)
    payload, lines = [], []
    for job in jobs:
        events = store.job_events(job_id=job.id)
        payload.append({**job.as_dict(), "events": [e.as_dict() for e in events]})
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.updated_at))
        lines.append(f"job {job.id} | {job.state} | attempt {job.attempt} | {when} | "
                     f"{events[-1].reason if events else ''}")
    return _print(args, payload, lines or ["no jobs"])


def show_versions(args: argparse.Namespace) -> int:
    """Handler of ``factsync versions``."""
    store = _store(args)
    versions = store.versions()
    payload = store.version_rows(versions)
    lines = []
    for v, row in zip(versions, payload, strict=True):
        kpis = v.report.get("candidate", {})
        shown = ", ".join(f"{k} {val:.3f}" for k, val in kpis.items() if val is not None)
        fold = f" | folded into {row['fold']['checkpoint']}" if row["fold"] else ""
        lines.append(f"{'*' if row['live'] else ' '} {v.seq} {v.id} | {len(v.facts)} fact(s)"
                     f" | parent {v.parent_id} | {shown}{fold}")
    return _print(args, payload, lines)
