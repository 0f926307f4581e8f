"""Judging a candidate's KPI report against a policy's gates."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from factsync.policies.schema import Gate, Policy


@dataclass(frozen=True)
class GateResult:
    """One gate applied to one measurement.

    Attributes:
        gate: the condition in words.
        metric: the KPI judged.
        relation: the relation whose facts were judged, or ``None`` for the whole model.
        value: the candidate's value; ``None`` when there was nothing to measure.
        live: the live version's value measured in the same job, when known.
        passed: whether the condition holds (a gate with nothing to measure passes).
        dry_run: the result is reported but does not block.
    """

    gate: str
    metric: str
    relation: str | None
    value: float | None
    live: float | None
    passed: bool
    dry_run: bool

    @property
    def blocking(self) -> bool:
        """Failed and not a dry run."""
        return not self.passed and not self.dry_run

    def as_dict(self) -> dict:
        """A JSON-ready view."""
        return asdict(self)


def judge(policy: Policy, report: dict) -> list[GateResult]:
    """Every gate of ``policy`` applied to ``report`` (see ``evaluation.kpis``)."""
    results = [
        _apply(gate, None, report["candidate"].get(gate.metric), report["live"].get(gate.metric))
        for gate in policy.model_gates()
    ]
    for relation, kpis in sorted(report["by_relation"].items()):
        for gate in policy.gates_for(relation):
            results.append(
                _apply(
                    gate,
                    relation,
                    kpis["candidate"].get(gate.metric),
                    kpis["live"].get(gate.metric),
                )
            )
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
