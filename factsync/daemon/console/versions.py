"""What the versions pages show: the live version and its lineage, every version with
its facts, KPIs, gates and fold, the live pointer's moves, and where a rollback may go."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factsync.daemon.console.charts import charted_metrics
from factsync.daemon.console.reports import (
    GateRow,
    KpiRow,
    edit_summary,
    gate_rows,
    kpi_rows,
)
from factsync.store.store import StateStore

HISTORY_SHOWN = 20
"""Latest moves of the live pointer on the versions page."""


@dataclass(frozen=True)
class VersionRow:
    """A version as the console shows it."""

    id: str
    seq: int
    parent_id: str | None
    job_id: int | None
    created_at: float
    status: str
    live: bool
    facts: list[dict[str, Any]]
    kpis: list[KpiRow]
    gates: list[GateRow]
    edit: dict[str, Any]
    fold: dict[str, Any] | None


def versions_view(store: StateStore) -> dict[str, Any]:
    """Values of the versions page (newest version first)."""
    versions = store.versions()
    rows = [_version_row(r) for r in store.version_rows(versions)]
    by_id = {row.id: row for row in rows}
    live = next(row for row in rows if row.live)
    lineage = _lineage(by_id, live.id)
    return {
        "live": live,
        "lineage": lineage,
        "versions": rows,
        "targets": lineage[-2::-1],  # the live version's ancestors, newest first
        "history": store.live_history()[-HISTORY_SHOWN:][::-1],
        "charts": [m.value for m in charted_metrics(versions)],
    }


def version_view(store: StateStore, version_id: str) -> dict[str, Any]:
    """Values of one version's page.

    Raises:
        KeyError: no such version.
    """
    version = _version_row(store.version_rows([store.version(version_id=version_id)])[0])
    live = store.live_version()
    lineage = store.lineage(version_id=live.id)  # without the base model
    ancestors = [lineage[0].parent_id, *(v.id for v in lineage[:-1])] if lineage else []
    return {
        "version": version,
        "live_id": live.id,
        "can_roll_back_to": version.id in ancestors,
    }


def _version_row(row: dict[str, Any]) -> VersionRow:
    return VersionRow(
        id=row["id"], seq=row["seq"], parent_id=row["parent_id"], job_id=row["job_id"],
        created_at=row["created_at"], status=row["status"], live=row["live"],
        facts=list(row["facts"] or []), kpis=kpi_rows(row["report"]),
        gates=gate_rows(row["report"]), edit=edit_summary(row["report"]), fold=row["fold"],
    )


def _lineage(by_id: dict[str, VersionRow], version_id: str) -> list[VersionRow]:
    """The versions from the base down to ``version_id``, oldest first."""
    chain = []
    current: str | None = version_id
    while current is not None:
        chain.append(by_id[current])
        current = by_id[current].parent_id
    return chain[::-1]
