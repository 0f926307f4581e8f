"""What ``bench lifelong`` measures at a checkpoint, against the unedited model.

Every fact applied so far is scored (efficacy and paraphrase of earlier facts are their
retention), with its held-out neighbours; then the perplexity ratio on the fluency
texts (and, where given, on a larger held-out set of ordinary text), the share of
canary facts still held, each edited weight's norm growth and the editing seconds per
fact. Per-record values, and the perplexity ratios over their texts, give 95%
bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from factsync.bench.canary_facts import canaries_stated, canary_holds
from factsync.bench.norm_growth import NormGrowth, growth_summary
from factsync.editing.requests import EditRequest
from factsync.evaluation.fluency import perplexity_ratio, text_nlls
from factsync.evaluation.intervals import Interval, bootstrap_interval
from factsync.evaluation.kpis import Prompted
from factsync.evaluation.suites import Suite
from factsync.kpis.report import FACT_METRICS
from factsync.models.loading import LoadedModel

RECORD_METRICS = tuple(metric.value for metric in FACT_METRICS)
"""Metrics the suite scores with one value per edited record."""

METRICS = (
    *RECORD_METRICS,
    "perplexity_ratio",
    "held_out_perplexity_ratio",
    "canary",
    "norm_growth_max",
    "norm_growth_mean",
    "seconds_per_fact",
)
"""Every metric of a checkpoint, in report order."""


@dataclass(frozen=True)
class Checkpoint:
    """The model measured after ``facts`` facts were applied.

    Attributes:
        facts: facts applied (for the unedited model: records scored).
        values: per metric of ``METRICS``, its value; ``None`` where nothing was scored.
        intervals: the 95% bootstrap interval of each metric with one value per record
            or canary, and of the perplexity ratios (resampling the texts).
    """

    facts: int
    values: dict[str, float | None]
    intervals: dict[str, Interval]

    def to_json(self) -> dict:
        """The checkpoint as JSON can hold it (``from_json`` reads it back)."""
        return {"facts": self.facts, "values": self.values,
                "intervals": {name: i.as_list() for name, i in self.intervals.items()}}

    @classmethod
    def from_json(cls, saved: dict) -> Checkpoint:
        """The checkpoint ``to_json`` wrote."""
        return cls(facts=saved["facts"], values=saved["values"],
                   intervals={name: Interval(*bounds)
                              for name, bounds in saved["intervals"].items()})


@dataclass(frozen=True)
class Yardstick:
    """The fixed measures of a run, prepared on the unedited model.

    Attributes:
        suite: the edited records, their probes and held-out neighbours.
        canaries: record canaries: records the unedited model knows, never edited.
        fluency_texts: held-out text for perplexity.
        base_nlls: the unedited model's ``text_nlls`` of ``fluency_texts``.
        seed: seed of the bootstrap resampling.
        stated_canaries: the daemon's built-in canaries the unedited model states.
        held_out_texts: more ordinary text for a tighter perplexity ratio (none: not
            measured).
        held_out_base_nlls: the unedited model's ``text_nlls`` of ``held_out_texts``.
    """

    suite: Suite
    canaries: list[EditRequest]
    fluency_texts: list[str]
    base_nlls: list[tuple[float, int]]
    seed: int = 0
    stated_canaries: list[Prompted] = field(default_factory=list)
    held_out_texts: list[str] = field(default_factory=list)
    held_out_base_nlls: list[tuple[float, int]] = field(default_factory=list)

    @classmethod
    def prepare(
        cls,
        loaded: LoadedModel,
        suite: Suite,
        canaries: list[EditRequest],
        fluency_texts: list[str],
        *,
        seed: int = 0,
        stated_canaries: list[Prompted] | None = None,
        held_out_texts: list[str] | None = None,
    ) -> Yardstick:
        """Measure the unedited ``loaded`` on the fluency and held-out texts and hold the
        rest."""
        held_out = held_out_texts or []
        return cls(suite, canaries, fluency_texts, text_nlls(loaded, fluency_texts), seed,
                   stated_canaries or [], held_out, text_nlls(loaded, held_out))

    def measure(
        self, loaded: LoadedModel, facts: int, growth: NormGrowth,
        seconds_per_fact: float | None, *, first: int = 0, unedited: bool = False,
    ) -> Checkpoint:
        """Score records ``first`` to ``facts`` of the suite and the model as it is now.

        ``unedited`` says the model is still the one ``prepare`` measured, whose text
        NLLs are then reused instead of measured again (a held-out pass takes minutes).
        """
        per_record = self.suite.score(loaded, list(range(first, facts)))
        samples = {
            name: [v for v in per_record[name] if v is not None] for name in RECORD_METRICS
        }
        samples["canary"] = self.canaries_held(loaded)
        values, intervals = _summarised(samples, self.seed)
        growth_max, growth_mean = growth_summary(growth.measure(loaded))
        fluency = self._ratio(loaded, self.fluency_texts, self.base_nlls, unedited)
        intervals["perplexity_ratio"] = fluency
        held_out = None
        if self.held_out_texts:
            held_out = self._ratio(loaded, self.held_out_texts, self.held_out_base_nlls,
                                   unedited)
            intervals["held_out_perplexity_ratio"] = held_out
        values |= {
            "perplexity_ratio": fluency.mean,
            "held_out_perplexity_ratio": held_out.mean if held_out else None,
            "norm_growth_max": growth_max,
            "norm_growth_mean": growth_mean,
            "seconds_per_fact": seconds_per_fact,
        }
        return Checkpoint(facts, {name: values[name] for name in METRICS}, intervals)

    def canary_names(self) -> list[str]:
        """Per canary, in ``canaries_held``'s order, its prompt and the object it keeps."""
        return ([f"{r.prompt} {r.old_object}" for r in self.canaries]
                + [f"{prompt} {obj}" for prompt, obj in self.stated_canaries])

    def canaries_held(self, loaded: LoadedModel) -> list[float]:
        """Per canary, record canaries first, 1.0 while the model still holds it and 0.0
        once it does not."""
        return canary_holds(loaded, self.canaries) + canaries_stated(loaded,
                                                                     self.stated_canaries)

    def _ratio(self, loaded: LoadedModel, texts: list[str],
               base_nlls: list[tuple[float, int]], unedited: bool) -> Interval:
        nlls = base_nlls if unedited else text_nlls(loaded, texts)
        return perplexity_ratio(nlls, base_nlls, seed=self.seed)

    def measure_changed_back(
        self, loaded: LoadedModel, changed: int, growth: NormGrowth, seconds_per_fact: float
    ) -> ChangedBack:
        """After the whole suite was applied and then its first ``changed`` facts were
        changed back to their old objects: those records as ``Suite.score_changed_back``
        scores them, with the change-back jobs' ``seconds_per_fact``, and the model with
        the other records as ``measure`` scores it."""
        own = self.suite.score_changed_back(loaded, list(range(changed)))
        values, intervals = _summarised(
            {name: [v for v in own[name] if v is not None] for name in RECORD_METRICS},
            self.seed)
        values["seconds_per_fact"] = seconds_per_fact
        rest = self.measure(loaded, len(self.suite.cases), growth, None, first=changed)
        return ChangedBack(
            changed=Checkpoint(changed, {name: values.get(name) for name in METRICS}, intervals),
            rest=rest)


@dataclass(frozen=True)
class ChangedBack:
    """The model after the facts of a stream's first records were changed back.

    Attributes:
        changed: the changed-back records against their old objects (``facts`` is how
            many), with the change-back jobs' editing seconds per fact.
        rest: every other record, and the model as a whole, as a checkpoint scores them.
    """

    changed: Checkpoint
    rest: Checkpoint


def _summarised(
    samples: dict[str, list[float]], seed: int
) -> tuple[dict[str, float | None], dict[str, Interval]]:
    """Per metric, the mean of its samples (``None`` without any) and the 95% bootstrap
    interval of that mean."""
    values: dict[str, float | None] = {
        name: sum(s) / len(s) if s else None for name, s in samples.items()
    }
    return values, {name: bootstrap_interval(s, seed=seed) for name, s in samples.items() if s}
