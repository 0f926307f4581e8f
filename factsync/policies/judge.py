"""Judging a candidate's KPI report against a policy's gates."""

from __future__ import annotations

from factsync.kpis.report import GateResult, KpiReport
from factsync.policies.schema import Gate, Policy


def judge(policy: Policy, report: KpiReport) -> list[GateResult]:
    """Every gate of ``policy`` applied to ``report``."""
    results = [
        _apply(gate, None, report.candidate.get(gate.metric), report.live.get(gate.metric))
        for gate in policy.model_gates()
    ]
    for relation, (candidate, live) in sorted(report.by_relation.items()):
        for gate in policy.gates_for(relation):
            results.append(_apply(gate, relation, candidate.get(gate.metric),
                                  live.get(gate.metric)))
    return results


def _apply(gate: Gate, relation: str | None, value: float | None, live: float | None) -> GateResult:
    passed = True
    if value is not None:
        if gate.min is not None:
            passed &= value >= gate.min
        if gate.max is not None:
            passed &= value <= gate.max
        if gate.max_drop is not None and live is not None:
            passed &= live - value <= gate.max_drop
        if gate.max_rise is not None and live is not None:
            passed &= value - live <= gate.max_rise
    return GateResult(gate.describe(), gate.metric, relation, value, live, bool(passed),
                      gate.dry_run)
