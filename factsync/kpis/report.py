"""Metric names and the KPI report a candidate version is judged on.

One definition of each metric, used by the daemon, the bench, the API, Prometheus
labels and policy gates alike. Two forms are reported where COUNTERFACT has two:

- ``*_success``: the right object is more likely (mean per-token NLL) than the other
  one: the new object on edit and paraphrase prompts, the old one on a neighbour's;
- ``*_accuracy``: the model's greedy answer, teacher-forced, is the right object (for a
  neighbour: still the answer it gave before the edit).

Reports stored before these names existed used ``edit_success`` (now
``efficacy_accuracy``) and ``neighbourhood_preservation`` (now
``neighbourhood_accuracy``); ``Metric.parse`` and ``KpiValues.from_dict`` read both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from factsync.typed_yaml import Choice


class Metric(Choice):
    """A KPI; its value is the name in reports, gates and metric labels."""

    EFFICACY_SUCCESS = "efficacy_success"
    """Edit prompt: P(new object) > P(old object)."""
    EFFICACY_ACCURACY = "efficacy_accuracy"
    """Edit prompt: the greedy answer is the new object (the edit took)."""
    PARAPHRASE_SUCCESS = "paraphrase_success"
    """Paraphrase prompts: P(new) > P(old), per fact then averaged."""
    PARAPHRASE_ACCURACY = "paraphrase_accuracy"
    """Paraphrase prompts: the greedy answer is the new object."""
    NEIGHBOURHOOD_SUCCESS = "neighbourhood_success"
    """Held-out neighbours: P(their object) > P(the edit's new object)."""
    NEIGHBOURHOOD_ACCURACY = "neighbourhood_accuracy"
    """Held-out neighbours: the greedy answer is unchanged by the edit."""
    RETENTION = "retention"
    """Facts applied by earlier versions that the model still states (greedy)."""
    PERPLEXITY_RATIO = "perplexity_ratio"
    """Perplexity on held-out text against the base model's."""
    CANARY = "canary"
    """Facts the base model states and the feed never changes, still stated."""

    @classmethod
    def parse(cls, value: object, what: str = "metric") -> Metric:
        """The metric named ``value``, accepting the names older reports used."""
        return super().parse(LEGACY_NAMES.get(str(value), value), what)


LEGACY_NAMES = {"edit_success": "efficacy_accuracy",
                "neighbourhood_preservation": "neighbourhood_accuracy"}
"""Names of the first release -> today's."""

FACT_METRICS = (Metric.EFFICACY_SUCCESS, Metric.EFFICACY_ACCURACY, Metric.PARAPHRASE_SUCCESS,
                Metric.PARAPHRASE_ACCURACY, Metric.NEIGHBOURHOOD_SUCCESS,
                Metric.NEIGHBOURHOOD_ACCURACY)
"""KPIs measured per edited fact; they can be judged per relation."""

MODEL_METRICS = (Metric.RETENTION, Metric.CANARY, Metric.PERPLEXITY_RATIO)
"""KPIs of the whole model, measured for every candidate."""

CANDIDATE_METRICS = FACT_METRICS + MODEL_METRICS
"""Everything a candidate's report holds and a gate may judge."""

MONITOR_METRICS = (Metric.RETENTION, Metric.CANARY, Metric.PERPLEXITY_RATIO)
"""KPIs the monitor measures on the live version."""


@dataclass(frozen=True)
class KpiValues:
    """One model's value of each metric; ``None`` when there was nothing to measure."""

    values: Mapping[Metric, float | None] = field(default_factory=dict)

    def get(self, metric: Metric) -> float | None:
        """The value of ``metric``, ``None`` when unmeasured."""
        return self.values.get(metric)

    def to_dict(self) -> dict[str, float | None]:
        """A JSON-ready view keyed by metric name."""
        return {metric.value: value for metric, value in self.values.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> KpiValues:
        """Read ``to_dict``'s output (or an older report's); unknown names are skipped."""
        known = {}
        for name, value in values.items():
            try:
                known[Metric.parse(name)] = value
            except ValueError:
                continue
        return cls(known)


@dataclass(frozen=True)
class FactScore:
    """The candidate's scores on one edited fact.

    Attributes:
        change_id: the fact change the edit carries out.
        relation: the fact's relation id.
        prompt: the edit prompt with the subject filled in.
        new_object: what the model must now answer.
        old_object: what the live model answered before, if anything.
        probability: the candidate's probability of the new object on the prompt.
        values: the fact's value of each of ``FACT_METRICS``.
    """

    change_id: int
    relation: str
    prompt: str
    new_object: str
    old_object: str | None
    probability: float
    values: KpiValues

    @property
    def took(self) -> bool:
        """Whether the edit took: the greedy answer is the new object."""
        return bool(self.values.get(Metric.EFFICACY_ACCURACY))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view: the fields and the metrics side by side."""
        own = {k: v for k, v in asdict(self).items() if k != "values"}
        return {**own, "probability": round(self.probability, 4), **self.values.to_dict()}


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
    metric: Metric
    relation: str | None
    value: float | None
    live: float | None
    passed: bool
    dry_run: bool

    @property
    def blocking(self) -> bool:
        """Failed and not a dry run."""
        return not self.passed and not self.dry_run

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {**asdict(self), "metric": self.metric.value}


@dataclass(frozen=True)
class KpiReport:
    """A job's measurements of the live model and the candidate, and their verdict.

    Attributes:
        candidate: model-wide values of the candidate (live + the job's delta).
        live: the same, of the live version, measured in the same job.
        by_relation: per relation of the job's facts, (candidate, live) fact metrics.
        facts: the candidate's scores per edited fact.
        ime_iterations: IME passes the edit ran.
        edit_seconds: wall time of the edit.
        gates: every gate applied, once judged.
    """

    candidate: KpiValues
    live: KpiValues
    by_relation: Mapping[str, tuple[KpiValues, KpiValues]]
    facts: tuple[FactScore, ...]
    ime_iterations: int = 0
    edit_seconds: float = 0.0
    gates: tuple[GateResult, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the store, the API and version manifests keep."""
        return {
            "candidate": self.candidate.to_dict(),
            "live": self.live.to_dict(),
            "by_relation": {r: {"candidate": c.to_dict(), "live": v.to_dict()}
                            for r, (c, v) in self.by_relation.items()},
            "facts": [f.to_dict() for f in self.facts],
            "ime": {"iterations": self.ime_iterations, "seconds": self.edit_seconds},
            "gates": [g.as_dict() for g in self.gates],
        }

    @staticmethod
    def candidate_values(stored: Mapping[str, Any] | None) -> KpiValues:
        """The candidate values of a stored report (any release's); empty if none."""
        return KpiValues.from_dict((stored or {}).get("candidate", {}))


def mean(values: Iterable[float | bool | None]) -> float | None:
    """Mean of the values that are not ``None``; ``None`` when there are none."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None
