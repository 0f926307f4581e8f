"""The policy file: batch limits, editing settings, evaluation sizes and promotion gates.

A gate is a condition on one KPI that a candidate must meet to be promoted, either
absolute (``min``/``max``) or relative to the live version measured in the same job
(``max_drop``/``max_rise``). A gate marked ``dry_run`` is measured and reported but never
blocks. Gates under ``relations.<id>`` replace the gate on the same metric for the facts
of that relation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from factsync.editing.covariance import ShrinkageTarget
from factsync.editing.engine import EngineSettings
from factsync.editing.outcomes import TookRule
from factsync.editing.spread import Algorithm, LeadHold, SpreadSettings
from factsync.editing.targets import StepRule, TargetSettings
from factsync.kpis.report import (
    CANDIDATE_METRICS,
    FACT_METRICS,
    MODEL_METRICS,
    MONITOR_METRICS,
    Metric,
)
from factsync.typed_yaml import Choice, build, load_yaml_file


class OnFailure(Choice):
    """What a rejected job does with its facts."""

    REJECT = "reject"
    """Fail every fact of the job."""
    RETRY_PASSING = "retry_passing"
    """Fail the facts whose edit did not take and retry the others once; when every edit
    took, retry the job in halves, so that the facts at fault end up alone and fail."""

class OnRollback(Choice):
    """What happens to the facts of rolled-back versions."""

    QUARANTINE = "quarantine"
    """An operator decides."""
    REQUEUE = "requeue"
    """They are edited again."""


@dataclass(frozen=True)
class Gate:
    """One promotion condition.

    Attributes:
        metric: the KPI judged, by name (``factsync.kpis.report.Metric``; the names of
            the first release are accepted); held as the ``Metric`` once built.
        min: the candidate's value must be at least this.
        max: ... at most this.
        max_drop: ... at most this much below the live version's.
        max_rise: ... at most this much above the live version's.
        dry_run: report the result but never block promotion.
    """

    metric: str
    min: float | None = None
    max: float | None = None
    max_drop: float | None = None
    max_rise: float | None = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        metric = _metric(self.metric, CANDIDATE_METRICS)
        object.__setattr__(self, "metric", metric)
        bounds = [self.min, self.max, self.max_drop, self.max_rise]
        if all(b is None for b in bounds):
            raise ValueError(f"gate on {self.metric} needs min, max, max_drop or max_rise")
        for name in ("max_drop", "max_rise"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")

    def describe(self) -> str:
        """The condition in words, e.g. ``retention >= 0.95``."""
        parts = []
        name = self.metric.value
        if self.min is not None:
            parts.append(f"{name} >= {self.min:g}")
        if self.max is not None:
            parts.append(f"{name} <= {self.max:g}")
        if self.max_drop is not None:
            parts.append(f"{name} at most {self.max_drop:g} below live")
        if self.max_rise is not None:
            parts.append(f"{name} at most {self.max_rise:g} above live")
        return " and ".join(parts) + (" (dry run)" if self.dry_run else "")


@dataclass(frozen=True)
class BatchPolicy:
    """How fact changes become jobs.

    Attributes:
        max_facts: facts per job at most.
        coalesce_seconds: a change waits this long (seconds) so that later changes to
            the same fact replace it instead of making a second edit.
    """

    max_facts: int = 10
    coalesce_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.max_facts < 1:
            raise ValueError(f"max_facts must be at least 1, got {self.max_facts}")
        if self.coalesce_seconds < 0:
            raise ValueError(f"coalesce_seconds must not be negative, got {self.coalesce_seconds}")


def _default_target() -> TargetSettings:
    """The shipped policy's z optimisation: each fact stops where its new object first
    leads, moved by the natural step rule, trained on its relation's phrasings under
    context prefixes dealt out among them. At layers 2-6 of SmolLM2-135M it kept the
    perplexity ratio within the default gate over 1,000 sequential COUNTERFACT facts;
    the engine's defaults (Adam steps to a likely target, at layers 4-8) passed it after
    about 200 (bench/README.md)."""
    return TargetSettings(steps=50, learning_rate=0.05, most_probable_stop=True,
                          step_rule=StepRule.NATURAL, train_phrasings=True,
                          phrasing_contexts=True, deal_phrasing_contexts=True)


@dataclass(frozen=True)
class EditingPolicy:
    """How the engine edits: every knob of ``EngineSettings``, with the engine's
    defaults except where the shipped policy chose otherwise (``took_rule`` and
    ``target``).

    Attributes:
        algorithm: ``memit`` or ``alphaedit``.
        max_iterations: IME passes at most (1 turns IME off).
        neighbours: use NME neighbours from the fact store.
        max_neighbours: NME neighbours per fact at most.
        contrast_neighbours: NME also holds up to this many facts per fact of its
            relation with other objects (one per object), which the fact's own
            neighbours, sharing its old object, do not cover (0: none).
        update_fraction: share of each requested change one layer's update carries.
        layers: decoder layers to edit; unset takes the model's default window (its
            family's, or one measured for its shape).
        preserve_applied: MEMIT holds the keys of facts applied earlier in place
            (AlphaEdit always does).
        mom2_update_weight: a fixed MEMIT lambda for every layer instead of the derived one.
        nullspace_threshold: AlphaEdit keeps directions of the key second moment whose
            eigenvalue is below this fraction of the largest.
        second_moment_shrinkage: MEMIT blends the key second moment toward
            ``second_moment_shrinkage_target`` by this weight (0 to below 1; 0 uses it as
            sampled).
        second_moment_shrinkage_target: ``isotropic`` (the default: the mean eigenvalue
            times the identity) or ``diagonal`` (the moment's own diagonal).
        joint_layers: MEMIT solves every edit layer's update at once, over the joint
            second moment of their stacked keys, instead of layer by layer (small
            models only: the stacked key size must be at most 16,384).
        hold_lead: where the spread holds the outputs at the tokens that lead every text
            (the start token, which the key statistics leave out) in place: ``never``,
            ``every_layer``, or ``where_cheap`` (the default): at the edit layers whose
            key statistics leave it cheaper to move than a typical key.
        took_rule: ``wins``: a fact leaves IME once its new object beats the old one on
            the bare prompt and under every context prefix; ``most_probable`` (the
            default, which the ``efficacy_accuracy`` gate asks for too): once it is also
            the greedy answer there; ``most_probable_bare``: the greedy answer on the
            bare prompt, which the gate scores, and a win under the prefixes.
        took_phrasings: the fact's phrasings must pass the took rule too.
        keep_neighbours_held: NME neighbours stay held in place in later jobs, like the
            facts applied earlier, until their subject is written.
        guard_facts: hold the built-in guard facts the model states (well-known facts
            none of the canaries share a subject with) in place in every job.
        target: the z optimisation (steps, learning rate, KL and norm terms, chunk size).
    """

    algorithm: Algorithm = SpreadSettings.algorithm
    max_iterations: int = EngineSettings.max_iterations
    neighbours: bool = EngineSettings.neighbours
    max_neighbours: int = 2
    contrast_neighbours: int = 0
    update_fraction: float = SpreadSettings.update_fraction
    layers: tuple[int, ...] | None = None
    preserve_applied: bool = SpreadSettings.preserve_applied
    mom2_update_weight: float | None = None
    nullspace_threshold: float = SpreadSettings.nullspace_threshold
    second_moment_shrinkage: float = SpreadSettings.second_moment_shrinkage
    second_moment_shrinkage_target: ShrinkageTarget = (
        SpreadSettings.second_moment_shrinkage_target)
    joint_layers: bool = SpreadSettings.joint_layers
    hold_lead: LeadHold = LeadHold.WHERE_CHEAP
    took_rule: TookRule = TookRule.MOST_PROBABLE
    took_phrasings: bool = EngineSettings.took_phrasings
    keep_neighbours_held: bool = EngineSettings.keep_neighbours_held
    guard_facts: bool = EngineSettings.guard_facts
    target: TargetSettings = field(default_factory=_default_target)

    def __post_init__(self) -> None:
        for name in ("max_neighbours", "contrast_neighbours"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        self.engine_settings()  # the engine's own checks, named by field

    def engine_settings(self) -> EngineSettings:
        """The engine settings this section describes."""
        return EngineSettings(
            layers=self.layers,
            max_iterations=self.max_iterations,
            neighbours=self.neighbours,
            target=self.target,
            took_rule=self.took_rule,
            took_phrasings=self.took_phrasings,
            keep_neighbours_held=self.keep_neighbours_held,
            guard_facts=self.guard_facts,
            spread=SpreadSettings(algorithm=self.algorithm,
                                  update_fraction=self.update_fraction,
                                  mom2_update_weight=self.mom2_update_weight,
                                  nullspace_threshold=self.nullspace_threshold,
                                  preserve_applied=self.preserve_applied,
                                  second_moment_shrinkage=self.second_moment_shrinkage,
                                  second_moment_shrinkage_target=(
                                      self.second_moment_shrinkage_target),
                                  joint_layers=self.joint_layers,
                                  hold_lead=self.hold_lead),
        )


@dataclass(frozen=True)
class EvaluationPolicy:
    """How much each candidate is measured on.

    Attributes:
        retention_sample: earlier applied facts re-checked per job; 0 checks them all.
        held_out_neighbours: neighbour facts per edited fact kept out of editing and
            used to score neighbourhood preservation.
    """

    retention_sample: int = 200
    held_out_neighbours: int = 4

    def __post_init__(self) -> None:
        if self.retention_sample < 0:
            raise ValueError(f"retention_sample must not be negative, got {self.retention_sample}")
        if self.held_out_neighbours < 0:
            raise ValueError(
                f"held_out_neighbours must not be negative, got {self.held_out_neighbours}"
            )


@dataclass(frozen=True)
class RelationPolicy:
    """Overrides for the facts of one relation: gates replacing those on the same metric."""

    gates: tuple[Gate, ...] = ()

    def __post_init__(self) -> None:
        for gate in self.gates:
            if gate.metric not in FACT_METRICS:
                raise ValueError(
                    "relation gates judge per-fact metrics "
                    f"({', '.join(m.value for m in FACT_METRICS)}); {gate.metric.value} is "
                    "model-wide"
                )


@dataclass(frozen=True)
class RollbackRule:
    """When the monitor rolls the live version back.

    Attributes:
        metric: one of ``MONITOR_METRICS`` by name; held as the ``Metric`` once built.
        min: the check fails when the value is below this.
        max: ... or above this.
        consecutive: failing checks in a row of one version before it is rolled back.
    """

    metric: str
    min: float | None = None
    max: float | None = None
    consecutive: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", _metric(self.metric, MONITOR_METRICS))
        if self.min is None and self.max is None:
            raise ValueError(f"rollback rule on {self.metric} needs min or max")
        if self.consecutive < 1:
            raise ValueError(f"consecutive must be at least 1, got {self.consecutive}")

    def broken_by(self, value: float | None) -> bool:
        """Whether ``value`` fails this rule (an unmeasured value never does)."""
        if value is None:
            return False
        return (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        )

    def describe(self) -> str:
        """The rule in words."""
        name = self.metric.value
        bounds = [f"{name} < {self.min:g}" if self.min is not None else "",
                  f"{name} > {self.max:g}" if self.max is not None else ""]
        return f"{' or '.join(b for b in bounds if b)} on {self.consecutive} check(s) in a row"


def _default_rules() -> tuple[RollbackRule, ...]:
    return (
        RollbackRule("retention", min=0.8),
        RollbackRule("canary", min=0.9),
        RollbackRule("perplexity_ratio", max=1.2),
    )


@dataclass(frozen=True)
class MonitorPolicy:
    """The scheduled re-check of the live version.

    Attributes:
        interval_seconds: time between checks (seconds).
        retention_sample: applied facts re-checked each time, a fresh random draw per
            check so that every fact is re-checked over many checks; 0 checks them all,
            which costs a check time in proportion to every fact ever applied.
        rules: rollback rules; any one broken ``consecutive`` times rolls back.
        on_rollback: what happens to the facts of rolled-back versions: ``quarantine``
            (an operator decides) or ``requeue`` (edited again).
        restate_worn: applied facts a check finds the live version no longer states
            (their edit wore off under later edits) are queued to be edited again,
            when no rule rolled the version back.
    """

    interval_seconds: float = 300.0
    retention_sample: int = 500
    rules: tuple[RollbackRule, ...] = field(default_factory=_default_rules)
    on_rollback: OnRollback = OnRollback.QUARANTINE
    restate_worn: bool = False

    def __post_init__(self) -> None:
        if self.interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be positive, got {self.interval_seconds}")
        if self.retention_sample < 0:
            raise ValueError(f"retention_sample must not be negative, got {self.retention_sample}")
        object.__setattr__(self, "on_rollback", OnRollback.parse(self.on_rollback, "on_rollback"))


def _default_gates() -> tuple[Gate, ...]:
    return (
        Gate("efficacy_accuracy", min=1.0),
        Gate("paraphrase_success", min=0.5),
        Gate("neighbourhood_accuracy", min=0.75),
        Gate("retention", min=0.9),
        Gate("retention", max_drop=0.05),
        Gate("perplexity_ratio", max=1.05),
        Gate("canary", max_drop=0.0),
    )


@dataclass(frozen=True)
class Policy:
    """A whole policy file.

    ``repair_canaries`` (on by default): a candidate that only the canary gates block,
    every edit of it having taken, is edited once more with the canaries it lost stated
    again in its job (their keys are then held like any applied fact's) and judged
    again, before ``on_failure`` acts.
    """

    name: str = "default"
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    editing: EditingPolicy = field(default_factory=EditingPolicy)
    evaluation: EvaluationPolicy = field(default_factory=EvaluationPolicy)
    gates: tuple[Gate, ...] = field(default_factory=_default_gates)
    relations: dict[str, RelationPolicy] = field(default_factory=dict)
    on_failure: OnFailure = OnFailure.RETRY_PASSING
    repair_canaries: bool = True
    monitor: MonitorPolicy = field(default_factory=MonitorPolicy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "on_failure", OnFailure.parse(self.on_failure, "on_failure"))

    @property
    def digest(self) -> str:
        """A short content hash that stamps the jobs and versions this policy judged."""
        canonical = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def gates_for(self, relation: str) -> tuple[Gate, ...]:
        """The per-fact gates that apply to ``relation``'s facts."""
        override = self.relations.get(relation)
        replaced = {g.metric for g in override.gates} if override else set()
        own = tuple(override.gates) if override else ()
        base = tuple(g for g in self.gates if g.metric in FACT_METRICS and g.metric not in replaced)
        return base + own

    def model_gates(self) -> tuple[Gate, ...]:
        """The gates on model-wide metrics."""
        return tuple(g for g in self.gates if g.metric in MODEL_METRICS)


def _metric(name: str, allowed: tuple[Metric, ...]) -> Metric:
    """The metric ``name`` names, if it is one of ``allowed``."""
    metric = Metric.parse(name)
    if metric not in allowed:
        raise ValueError(f"metric must be one of {', '.join(m.value for m in allowed)}, "
                         f"got {metric.value!r}")
    return metric


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file.

    Raises:
        SchemaError: naming the key and the value when the file is wrong.
    """
    return build(Policy, load_yaml_file(path), f"{path.name}")


def shipped_policy_dir() -> Path:
    """The ``policies/`` directory of the source tree that holds the shipped policies."""
    return Path(__file__).resolve().parents[2] / "policies"
