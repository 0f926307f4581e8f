"""The engine: iterative (IME) and neighbour-assisted (NME) editing over MEMIT/AlphaEdit.

One pass is OPTIMIZATION (targets z) then SPREAD (closed-form update). IME runs passes
on the already-edited model, recomputing keys and z each time, until every fact's edit
has taken or ``max_iterations`` is reached. An edit has taken when the new object wins
over the old one (or, with no old object known, is the model's greedy answer) on the
bare prompt and under every context prefix (``EngineSettings.took_rule`` can ask for
more). Facts whose edit took leave the optimisation (their z is costly) but stay in the
spread pinned to their current hidden state, so later passes move them little (the pin
is the spread's least squares, not exact: a narrow win can still be lost); a fact whose
edit did not take is optimised again from the model the pass left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from factsync import __version__
from factsync.editing.cancellation import Cancelled, never, stop_if
from factsync.editing.covariance import KeyStatistics
from factsync.editing.delta import ModelDelta, restored_weights
from factsync.editing.engine_state import (
    EngineState,
    KeySource,
    StateFile,
    read_state,
)
from factsync.editing.joint_spread import JointSpread, joint_lambda, shrunk_blocks
from factsync.editing.keys import lead_keys, subject_outputs, subject_states_by_layer
from factsync.editing.outcomes import TookRule, edit_outcomes
from factsync.editing.requests import EditRequest
from factsync.editing.spread import (
    Algorithm,
    LayerContext,
    LeadHold,
    SpreadSettings,
    holds_lead,
    lead_is_cheap,
    nullspace_projector,
    spread,
)
from factsync.editing.targets import TargetOptimiser, TargetSettings, optimise_targets
from factsync.models.loading import LoadedModel
from factsync.typed_yaml import Choice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """Everything that decides what an edit does.

    Attributes:
        layers: decoder layers to edit; ``None`` takes the model's default window.
        max_iterations: IME passes at most (1 is plain single-pass editing).
        neighbours: NME: hold each request's neighbours in place, in the optimisation
            and in the spread.
        target: OPTIMIZATION-stage settings.
        spread: SPREAD-stage settings.
        release_superseded: a subject written again lets go of its earlier keys, which
            the spread held in place (``engine_state``). ``False`` keeps holding them, as
            the engine did before it knew keys' subjects, so benches can set the two
            side by side.
        took_rule: what the new object must do on the bare prompt and under every
            context prefix for a fact to leave IME: ``wins`` (beat the old object),
            ``most_probable`` (also be the greedy answer) or ``most_probable_bare``
            (the greedy answer on the bare prompt, a win elsewhere). The joint spread's
            edits mostly win without leading (exact-match efficacy 0.41 over 150 facts);
            ``most_probable`` sends those through another pass, which lifted it to 0.90
            at the per-layer spread's held-out harm and twice its time (bench/README.md).
        took_phrasings: the request's phrasings, bare, must pass the took rule too.
        keep_neighbours_held: NME neighbours stay held in place in later jobs, like the
            keys of applied facts, until their subject is written; the edit's state
            carries their keys, read from the edited model. With
            ``release_superseded``, a neighbour whose subject already stands is not
            held again.
        guard_facts: hold the keys of well-known facts the model states
            (``factsync.facts.guards``) in place in every job, from the start, like
            those of facts applied earlier: the oldest state of every lineage. A job
            that writes a guard's subject lets go of it as of any fact written again.
            ``build_engine`` reads which the model states.
    """

    layers: tuple[int, ...] | None = None
    max_iterations: int = 3
    neighbours: bool = True
    target: TargetSettings = field(default_factory=TargetSettings)
    spread: SpreadSettings = field(default_factory=SpreadSettings)
    release_superseded: bool = True
    took_rule: TookRule = TookRule.WINS
    took_phrasings: bool = False
    keep_neighbours_held: bool = False
    guard_facts: bool = False

    def __post_init__(self) -> None:
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be at least 1, got {self.max_iterations}")
        if self.layers is not None and (
            not self.layers or list(self.layers) != sorted(set(self.layers))
        ):
            raise ValueError(f"layers must be distinct and increasing, got {self.layers}")

    def edit_layers(self, loaded: LoadedModel) -> list[int]:
        """The configured layers, or the default window for ``loaded``."""
        return list(self.layers or loaded.default_layers)


class StopReason(Choice):
    """Why a fact left IME."""

    TOOK = "took"
    PASSES_EXHAUSTED = "passes_exhausted"


@dataclass(frozen=True)
class IterationRecord:
    """One fact in one IME pass.

    Attributes:
        iteration: pass number, from 1.
        optimisation_probability: target probability the z optimisation reached.
        spread_probability: target probability after the pass's weight update.
        steps: z gradient steps taken.
        took: whether the edit had taken after this pass (the fact then leaves IME).
    """

    iteration: int
    optimisation_probability: float
    spread_probability: float
    steps: int
    took: bool


@dataclass(frozen=True)
class PassTiming:
    """Wall time of one IME pass, by stage (seconds)."""

    optimisation_seconds: float
    spread_seconds: float


@dataclass
class EditResult:
    """What an edit produced.

    Attributes:
        delta: the combined update of all passes.
        records: per request, one record per pass it was optimised in.
        iterations: passes run.
        keys: per layer, the final keys (key, groups) of the edited facts, then those
            of the neighbours that stay held (``keep_neighbours_held``).
        subjects: the subject of each key group.
        seconds: wall time of the edit.
        timings: per pass, time spent in each stage.
    """

    delta: ModelDelta
    records: list[list[IterationRecord]]
    iterations: int
    keys: dict[int, torch.Tensor]
    subjects: tuple[str, ...]
    seconds: float
    timings: list[PassTiming]

    @property
    def state(self) -> EngineState:
        """What this edit leaves for later edits once applied (see ``EngineState``)."""
        return EngineState(keys=self.keys, subjects=self.subjects)

    @property
    def final_probabilities(self) -> list[float]:
        """Per request, the target probability after its last pass."""
        return [r[-1].spread_probability for r in self.records]

    @property
    def stop_reasons(self) -> list[StopReason]:
        """Per request, why it left IME."""
        return [StopReason.TOOK if r[-1].took else StopReason.PASSES_EXHAUSTED
                for r in self.records]


class EditEngine:
    """Edits one model; holds what persists between jobs.

    Owns the sampled context prefixes, AlphaEdit's projectors and the running sum
    ``K_p K_p^T`` of keys of facts applied earlier, which the spread holds in place.
    That sum is the live version's state: ``restore`` sets it from the lineage's saved
    states and ``remember`` adds an applied edit. It also keeps each subject's standing
    keys, so that an edit of a subject written before releases them: the spread would
    otherwise hold the very key it must move (see ``engine_state``). They take key size
    x key groups x edit layers floats per subject (about 60 KB on SmolLM2-135M).
    ``edit`` leaves the model as it found it and returns a delta; callers apply it.

    The OPTIMIZATION stage runs through ``optimiser``: in this process by default, or
    fanned out to workers that carry the same model (``factsync.executors``). The
    ``natural`` step rule needs ``sensitivity``, the last edit layer's
    (``editing.sensitivity``); ``joint_layers`` needs ``joint_moment``, the edit layers'
    joint key statistics (``joint_spread.joint_moment_for``), and then holds earlier
    edits' keys stacked over the layers instead of layer by layer. ``guards`` (template,
    subject) are held from the start, their keys read from the model as it is then.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        settings: EngineSettings,
        statistics: dict[int, KeyStatistics],
        contexts: list[str],
        *,
        optimiser: TargetOptimiser = optimise_targets,
        sensitivity: torch.Tensor | None = None,
        joint_moment: torch.Tensor | None = None,
        guards: Sequence[tuple[str, str]] = (),
    ) -> None:
        if settings.target.needs_sensitivity and sensitivity is None:
            raise ValueError("the natural step rule needs the last edit layer's sensitivity")
        if settings.spread.joint_layers and joint_moment is None:
            raise ValueError("joint_layers needs the edit layers' joint key statistics")
        self.loaded = loaded
        self.sensitivity = sensitivity
        self.settings = settings
        self.optimiser = optimiser
        self.layers = settings.edit_layers(loaded)
        missing = [layer for layer in self.layers if layer not in statistics]
        if missing:
            raise ValueError(f"no key statistics for edit layers {missing}")
        if not contexts or contexts[0] != "":
            raise ValueError("contexts must start with the bare context ''")
        self.contexts = contexts
        self.statistics = statistics
        lead = (lead_keys(loaded, self.layers)
                if settings.spread.hold_lead is LeadHold.WHERE_CHEAP else {})
        self.layer_contexts = {
            layer: self._layer_context(statistics[layer], lead.get(layer))
            for layer in self.layers
        }
        self.joint = self._joint_spread(joint_moment)
        # subject -> where its standing keys are: a state (or its file) and the columns
        self._standing: dict[str, tuple[KeySource, list[int]]] = {}
        self._keeps_keys = any(c.preserved is not None for c in self._held_contexts())
        self._guard = self._guard_state(guards)
        self.restore([])  # an empty lineage: the guards alone

    def _layer_context(self, stats: KeyStatistics, lead: torch.Tensor | None) -> LayerContext:
        """The layer's spread context; ``lead``: its leading tokens' keys, when the
        settings hold them where C leaves them cheap."""
        spread_settings = self.settings.spread
        fraction = spread_settings.update_fraction
        device = self.loaded.device
        memit_stats = stats.shrunk(spread_settings.second_moment_shrinkage,
                                   spread_settings.second_moment_shrinkage_target)
        lam = (
            spread_settings.mom2_update_weight
            or memit_stats.median_mahalanobis(device=device) * (1 - fraction) / fraction
        )
        context = LayerContext(second_moment=memit_stats.second_moment.float(), lam=lam,
                               lead_cheap=lead_is_cheap(memit_stats, lead))
        alphaedit = spread_settings.algorithm is Algorithm.ALPHAEDIT
        if alphaedit:
            threshold = spread_settings.nullspace_threshold
            context.projector = stats.remembered(
                f"nullspace_projector/threshold={threshold}",
                lambda: nullspace_projector(stats.second_moment.to(device), threshold))
        if alphaedit or (spread_settings.preserve_applied and not spread_settings.joint_layers):
            size = stats.second_moment.shape[0]
            context.preserved = torch.zeros(size, size, dtype=torch.float64)
        return context

    def _joint_spread(self, moment: torch.Tensor | None) -> JointSpread | None:
        """The spread over every edit layer at once, when the settings ask for it."""
        spread_settings = self.settings.spread
        if not spread_settings.joint_layers or moment is None:
            return None
        sizes = [self.statistics[layer].key_size for layer in self.layers]
        shrunk = shrunk_blocks(moment, sizes, spread_settings.second_moment_shrinkage,
                               spread_settings.second_moment_shrinkage_target)
        lam = spread_settings.mom2_update_weight or joint_lambda(
            {layer: self.statistics[layer] for layer in self.layers}, shrunk,
            spread_settings.update_fraction)
        return JointSpread.build(self.loaded, self.layers, shrunk.float(), lam,
                                 preserve=spread_settings.preserve_applied)

    def lambdas(self) -> dict[int, float]:
        """MEMIT's lambda per edit layer, as derived or configured (the joint spread's
        is ``joint.context.lam``)."""
        return {layer: c.lam for layer, c in self.layer_contexts.items()}

    def remember(self, result: EditResult, saved: StateFile | None = None) -> None:
        """Record an applied edit's keys, so later edits hold them in place; they
        supersede the keys of its subjects applied earlier. With ``saved``, the file of
        ``result.state``, the engine reads the keys from there when it needs them again
        instead of keeping them."""
        if not self._keeps_keys:
            return
        state = result.state
        if self.settings.release_superseded:
            self._hold(self._standing_keys(set(result.subjects)), -1.0)
            self._stand(saved if saved is not None else state, state.subjects, later=set())
        self._hold(state.keys)

    def restore(self, lineage: Sequence[KeySource]) -> None:
        """Preserve exactly the standing keys of ``lineage`` (the live version's states
        or their files, oldest first) and of the guards, forgetting everything
        remembered before. The states are read one at a time, newest first."""
        for context in self._held_contexts():
            context.forget_held()
        self._standing = {}
        if not self._keeps_keys:
            return
        lineage = [self._guard, *lineage]
        if not self.settings.release_superseded:
            for source in lineage:
                self._hold(read_state(source).keys)
            return
        later: set[str] = set()
        for source in reversed(lineage):
            state = read_state(source)
            columns = self._stand(source, state.subjects, later)
            self._hold(state.select(columns).keys)
            later.update(s for s in state.subjects if s is not None)

    def _guard_state(self, guards: Sequence[tuple[str, str]]) -> EngineState:
        """The keys of ``guards`` at the edit layers, read from the model as it is."""
        if not guards:
            return EngineState.empty()
        if not self._keeps_keys:
            log.warning("%d guard facts are not held: this spread holds no keys in place "
                        "(preserve_applied is off)", len(guards))
            return EngineState.empty()
        log.info("holding %d guard facts in place", len(guards))
        read = subject_states_by_layer(self.loaded, list(guards), self.layers,
                                       self.layers[-1], [""])
        owners = read[self.layers[-1]].owners.tolist()
        return EngineState(keys={layer: states.keys.cpu() for layer, states in read.items()},
                           subjects=tuple(guards[owner][1] for owner in owners))

    def preserved(self) -> dict[int, torch.Tensor]:
        """A copy of ``K_p K_p^T`` per layer (empty when nothing is preserved, and for
        the joint spread, which holds ``joint.context.preserved``)."""
        return {layer: c.preserved.clone() for layer, c in self.layer_contexts.items()
                if c.preserved is not None}

    def _stand(self, source: KeySource, subjects: Sequence[str | None],
               later: set[str]) -> list[int]:
        """Record that the keys of ``subjects`` (the columns of ``source``), except those
        of subjects in ``later``, stand and are found in ``source``; their columns."""
        columns: dict[str, list[int]] = {}
        for column, subject in enumerate(subjects):
            if subject is None or subject not in later:
                columns.setdefault(subject, []).append(column)
        for subject, where in columns.items():
            if subject is not None:
                self._standing[subject] = (source, where)
        return sorted(c for where in columns.values() for c in where)

    def _standing_keys(self, subjects: set[str]) -> dict[int, torch.Tensor]:
        """Per edit layer, the standing keys (key, m) of ``subjects`` (empty: none stand),
        each state they are in read once."""
        by_source: dict[int, tuple[KeySource, list[int]]] = {}
        for subject in sorted(subjects & self._standing.keys()):
            source, columns = self._standing[subject]
            by_source.setdefault(id(source), (source, []))[1].extend(columns)
        found = [read_state(source).select(columns).keys
                 for source, columns in by_source.values()]
        return {layer: torch.cat([keys[layer].cpu() for keys in found if layer in keys], dim=1)
                for layer in self.layers if any(layer in keys for keys in found)}

    def _held_contexts(self) -> list[LayerContext]:
        """Every system that holds keys in place: the joint one, or each layer's."""
        if self.joint is not None:
            return [self.joint.context]
        return list(self.layer_contexts.values())

    def _hold(self, keys: dict[int, torch.Tensor], sign: float = 1.0) -> None:
        """Hold per-layer ``keys`` in place (``sign`` -1: let go of them)."""
        if self.joint is not None:
            self.joint.hold(keys, sign)
            return
        for layer, layer_keys in keys.items():
            context = self.layer_contexts.get(layer)
            if context is None:
                log.warning("preserved keys of layer %d ignored: it is not an edit layer "
                            "(the edit layers changed since they were saved)", layer)
            else:
                context.hold(layer_keys, sign)

    def edit(self, requests: list[EditRequest], *, cancelled: Cancelled = never) -> EditResult:
        """Run IME (and NME when enabled) for ``requests``; the model is left unchanged.

        ``cancelled`` is asked before every optimisation step and every spread; when it
        answers yes the edit stops with ``EditCancelled``.
        """
        if not requests:
            raise ValueError("no edit requests")
        started = time.monotonic()
        loaded, settings = self.loaded, self.settings
        prompts = [(r.template, r.subject) for r in requests]
        # A neighbour about a subject the job writes shares that subject's key: the spread
        # cannot hold the key in place and move it, so only the optimisation holds it.
        edited = {r.subject for r in requests}
        protected = [(n.template, n.subject) for r in requests for n in r.neighbours
                     if n.subject not in edited] if settings.neighbours else []
        last = self.layers[-1]
        paths = [loaded.spec.mlp_out_path(layer) for layer in self.layers]
        records: list[list[IterationRecord]] = [[] for _ in requests]
        total = ModelDelta(layers={}, layout=loaded.spec.weight_layout, metadata=self._metadata())
        active = list(range(len(requests)))
        keys: dict[int, torch.Tensor] = {}
        owners = torch.empty(0, dtype=torch.long)
        timings: list[PassTiming] = []
        # The subjects written again: their earlier keys are no longer held in place
        # (none are known without release_superseded).
        released = self._standing_keys({r.subject for r in requests})
        iteration = 0
        with restored_weights(loaded, paths):
            for iteration in range(1, settings.max_iterations + 1):
                pass_started = time.monotonic()
                optimised = self.optimiser(
                    loaded,
                    [requests[i] for i in active],
                    last,
                    self.contexts,
                    settings.target,
                    use_neighbours=settings.neighbours,
                    cancelled=cancelled,
                    applied=total,
                    sensitivity=self.sensitivity,
                )
                stop_if(cancelled)
                spread_started = time.monotonic()
                targets = subject_outputs(loaded, prompts, last)  # pins facts that took
                targets[active] = optimised.z.to(targets)
                step, keys, owners = self._spread(prompts, targets, protected, released)
                step.apply(loaded)
                total = total.compose(step)
                timings.append(
                    PassTiming(spread_started - pass_started, time.monotonic() - spread_started)
                )
                outcome = edit_outcomes(loaded, [requests[i] for i in active], self.contexts,
                                        settings.took_rule, settings.took_phrasings)
                for slot, fact in enumerate(active):
                    records[fact].append(
                        IterationRecord(
                            iteration,
                            optimised.probability[slot],
                            outcome.probability[slot],
                            optimised.steps[slot],
                            outcome.took[slot],
                        )
                    )
                active = [fact for slot, fact in enumerate(active) if not outcome.took[slot]]
                log.info(
                    "IME pass %d: %d facts optimised in %.1fs, spread in %.1fs, %d of %d not "
                    "yet taken, mean target probability %.3f",
                    iteration,
                    len(outcome.took),
                    timings[-1].optimisation_seconds,
                    timings[-1].spread_seconds,
                    len(active),
                    len(requests),
                    sum(r[-1].spread_probability for r in records) / len(records),
                )
                if not active:
                    break
            subjects = tuple(requests[int(fact)].subject for fact in owners)
            if settings.keep_neighbours_held:
                keys, subjects = self._with_lasting_neighbours(keys, subjects, protected)
        return EditResult(
            delta=total,
            records=records,
            iterations=iteration,
            keys=keys,
            subjects=subjects,
            seconds=time.monotonic() - started,
            timings=timings,
        )

    def _with_lasting_neighbours(
        self, keys: dict[int, torch.Tensor], subjects: tuple[str, ...],
        protected: list[tuple[str, str]],
    ) -> tuple[dict[int, torch.Tensor], tuple[str, ...]]:
        """``keys`` and ``subjects`` with the keys, read from the model as it is now
        edited, of the ``protected`` neighbours to hold in later jobs: one per distinct
        prompt, none of a subject that already stands."""
        lasting = [p for p in dict.fromkeys(protected) if p[1] not in self._standing]
        if not lasting:
            return keys, subjects
        read = subject_states_by_layer(self.loaded, lasting, self.layers, self.layers[-1], [""])
        return ({layer: torch.cat([keys[layer], read[layer].keys.to(keys[layer])], dim=1)
                 for layer in keys},
                subjects + tuple(subject for _, subject in lasting))

    def _spread(self, prompts: list[tuple[str, str]], targets: torch.Tensor,
                protected: list[tuple[str, str]], released: dict[int, torch.Tensor],
                ) -> tuple[ModelDelta, dict[int, torch.Tensor], torch.Tensor]:
        """One pass's SPREAD: jointly over the edit layers, or layer by layer."""
        if self.joint is not None:
            return self.joint.spread(self.loaded, prompts, targets, self.contexts,
                                     protected=protected, released=released,
                                     lead_layers=[layer for layer, context
                                                  in self.layer_contexts.items()
                                                  if holds_lead(self.settings.spread.hold_lead,
                                                                context)])
        return spread(self.loaded, prompts, targets, self.layers, self.contexts,
                      self.layer_contexts, self.settings.spread, protected=protected,
                      released=released)

    def _metadata(self) -> dict[str, str]:
        return {
            "factsync_version": __version__,
            "model": self.loaded.name,
            "model_fingerprint": self.loaded.fingerprint,
            "layers": ",".join(map(str, self.layers)),
            "lambdas": (f"joint {self.joint.context.lam:.1f}" if self.joint is not None
                        else ",".join(f"{v:.1f}" for v in self.lambdas().values())),
            "settings": repr(asdict(self.settings)),
        }
