"""``factsync bench sync``: time from writing a facts file to its facts being live.

A real daemon runs in a subprocess on a fresh data directory (sharing the model and
statistics caches, or with ``fresh_home`` an empty ``FACTSYNC_HOME`` of its own, as on
a machine factsync has never run on: the default model is fetched and converted, the
corpus and the key statistics made). For each size, a file of that many COUNTERFACT
rewrites is written into its watched directory and the clock runs until every change in
it is closed (applied, failed or already true); the table gives that time, the jobs it took and how
many facts were promoted.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from factsync.bench.live_daemon import DaemonProcess
from factsync.durable import write_text
from factsync.facts.catalog import RelationCatalog
from factsync.paths import HOME_ENV

Rewrite = tuple[str, str, str]
"""(subject, relation id, new object)."""


@dataclass(frozen=True)
class SyncRow:
    """One facts file's trip through the daemon."""

    facts: int
    seconds: float
    jobs: int
    promoted: int
    failed: int
    reasons: tuple[str, ...]


def load_rewrites(path: Path) -> list[Rewrite]:
    """The requested rewrites of a COUNTERFACT file whose relation the catalog knows."""
    catalog = RelationCatalog.built_in()
    rewrites = []
    for record in json.loads(path.read_text()):
        rewrite = record["requested_rewrite"]
        if catalog.resolve(rewrite["relation_id"]) is not None:
            rewrites.append(
                (rewrite["subject"], rewrite["relation_id"], rewrite["target_new"]["str"])
            )
    return rewrites


def run_sync_latency(
    usable: list[Rewrite], sizes: list[int], *, timeout: float = 3600, fresh_home: bool = False
) -> tuple[float, list[SyncRow]]:
    """Start-up seconds, and one row per size (files are written one after another)."""
    if sum(sizes) > len(usable):
        raise ValueError(f"need {sum(sizes)} COUNTERFACT records, have {len(usable)}")
    with tempfile.TemporaryDirectory(prefix="factsync-sync-bench-") as scratch:
        daemon = DaemonProcess(Path(scratch) / "data")
        env = {HOME_ENV: str(Path(scratch) / "home")} if fresh_home else None
        started = time.monotonic()
        daemon.start(ready_timeout=timeout, env=env)
        startup = time.monotonic() - started
        rows, offset = [], 0
        try:
            for size in sizes:
                batch = usable[offset : offset + size]
                offset += size
                rows.append(_one_file(daemon, batch, f"batch-{len(rows)}.jsonl", timeout))
        finally:
            daemon.stop()
    return startup, rows


def _one_file(
    daemon: DaemonProcess, cases: list[Rewrite], name: str, timeout: float
) -> SyncRow:
    jobs_before = len(daemon.get("/jobs"))
    lines = "".join(
        json.dumps({"subject": s, "relation": r, "object": o}) + "\n" for s, r, o in cases
    )
    subjects = {s for s, _, _ in cases}
    started = time.monotonic()
    write_text(daemon.facts_dir / name, lines)

    def closed() -> list[dict] | None:
        facts = [f for f in daemon.get("/facts") if f["subject"] in subjects]
        done = len(facts) == len(cases) and all(
            f["state"] not in ("pending", "queued") for f in facts
        )
        return facts if done else None

    facts = daemon.wait_for(closed, timeout, f"the {len(cases)} fact(s) of {name}")
    seconds = time.monotonic() - started
    return SyncRow(
        facts=len(cases),
        seconds=seconds,
        jobs=len(daemon.get("/jobs")) - jobs_before,
        promoted=sum(f["state"] == "applied" for f in facts),
        failed=sum(f["state"] == "failed" for f in facts),
        reasons=tuple(f"{f['subject']} {f['relation']} -> {f['object']}: {f['reason']}"
                      for f in facts if f["state"] == "failed"),
    )


def format_sync_table(startup: float, rows: list[SyncRow], *, fresh_home: bool = False) -> str:
    """The rows as a plain-text table; with ``fresh_home``, also the time from launch to
    the first promoted version."""
    caches = "empty FACTSYNC_HOME" if fresh_home else "shared caches"
    lines = [
        f"daemon start-up to ready: {startup:.1f} s ({caches}, default policy, coalesce "
        "window 2 s)",
        "facts | seconds to live | jobs | promoted | failed",
        "----- | --------------- | ---- | -------- | ------",
    ]
    lines += [f"{r.facts} | {r.seconds:.1f} | {r.jobs} | {r.promoted} | {r.failed}"
              for r in rows]
    lines += [f"failed: {reason}" for r in rows for reason in r.reasons]
    if fresh_home:
        lines.append(_first_promotion(startup, rows))
    return "\n".join(lines)


def _first_promotion(startup: float, rows: list[SyncRow]) -> str:
    """Seconds from launch until a file's facts were promoted, the files before it
    included (their facts may have failed the gates)."""
    elapsed = startup
    for number, row in enumerate(rows, 1):
        elapsed += row.seconds
        if row.promoted:
            return f"launch to the first promoted version (file {number}): {elapsed:.1f} s"
    return "no file's facts were promoted"
