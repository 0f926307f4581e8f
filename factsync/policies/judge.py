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


def beyond_reach(policy: Policy, report: KpiReport) -> list[GateResult]:
    """The blocking whole-model gates of ``report`` that the live version fails as well.

    A whole-model KPI (perplexity, retention, canaries) is measured on the whole model,
    not on the job's facts, so it starts from the live version's value. When that is
    already past a gate's ``min`` or ``max``, trying the job's facts again in smaller
    groups fails them again: only relaxing the gate, or rolling the live version back,
    lets edits through.
    """
    fixed = {gate.describe() for gate in policy.model_gates()
             if _outside_bounds(gate, report.live.get(gate.metric))}
    return [result for result in report.gates
            if result.blocking and result.relation is None and result.gate in fixed]


def _apply(gate: Gate, relation: str | None, value: float | None, live: float | None) -> GateResult:
    passed = True
    if value is not None:
        passed &= not _outside_bounds(gate, value)
        if gate.max_drop is not None and live is not None:
            passed &= live - value <= gate.max_drop
        if gate.max_rise is not None and live is not None:
            passed &= value - live <= gate.max_rise
    return GateResult(gate.describe(), gate.metric, relation, value, live, bool(passed),
                      gate.dry_run)


def _outside_bounds(gate: Gate, value: float | None) -> bool:
    """Whether ``value`` breaks the gate's absolute bounds (``min``, ``max``)."""
    if value is None:
        return False
    return ((gate.min is not None and value < gate.min)
            or (gate.max is not None and value > gate.max))
