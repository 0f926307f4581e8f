"""Stored KPI reports (a version's or a job's ``report``) as rows the templates show.

Reports are JSON written by any release, so every field is read with a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from factsync.kpis.report import KpiValues, Metric


@dataclass(frozen=True)
class KpiRow:
    """One metric of a report: the candidate's value and the live version's before it."""

    metric: str
    candidate: float | None
    live: float | None


@dataclass(frozen=True)
class GateRow:
    """One gate's verdict: the condition (which holds the threshold) and the value
    measured against it."""

    gate: str
    relation: str | None
    value: float | None
    live: float | None
    passed: bool
    dry_run: bool

    @property
    def verdict(self) -> str:
        """``passed``, ``failed``, or ``failed (dry run)`` for a failure that did not block."""
        if self.passed:
            return "passed"
        return "failed (dry run)" if self.dry_run else "failed"


def kpi_rows(report: Mapping[str, Any] | None) -> list[KpiRow]:
    """Each metric the report measured, in the order ``Metric`` lists them."""
    stored = report or {}
    candidate = KpiValues.from_dict(stored.get("candidate") or {})
    live = KpiValues.from_dict(stored.get("live") or {})
    return [KpiRow(m.value, candidate.get(m), live.get(m)) for m in Metric
            if m in candidate.values or m in live.values]


def gate_rows(report: Mapping[str, Any] | None) -> list[GateRow]:
    """Every gate the report was judged on."""
    return [
        GateRow(gate=str(g.get("gate", g.get("metric", "?"))), relation=g.get("relation"),
                value=g.get("value"), live=g.get("live"), passed=bool(g.get("passed")),
                dry_run=bool(g.get("dry_run")))
        for g in (report or {}).get("gates") or []
    ]


def fact_scores(report: Mapping[str, Any] | None) -> dict[int, dict[str, Any]]:
    """The candidate's per-fact scores, by fact change id."""
    return {f["change_id"]: f for f in (report or {}).get("facts") or []
            if isinstance(f, dict) and "change_id" in f}


def edit_summary(report: Mapping[str, Any] | None) -> dict[str, Any]:
    """IME passes and edit seconds, as ``{"iterations", "seconds"}`` (``None`` if unknown)."""
    ime = (report or {}).get("ime") or {}
    return {"iterations": ime.get("iterations"), "seconds": ime.get("seconds")}
