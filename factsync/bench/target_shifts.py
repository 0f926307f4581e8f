"""``factsync bench shifts``: the target shifts the OPTIMIZATION stage asks for.

For each fact the optimisation moves the residual at the subject's last token of the
last edit layer from h to its target z. Two questions about a long stream turn on
these shifts:
- Do they grow as edits pile up? Locate-and-edit methods can feed back on themselves:
  larger weights give larger hidden states, which ask for larger shifts, which give
  larger weights. Measured with saved deltas applied, the shifts say whether that loop
  runs on this model.
- Do different facts' shifts share a direction? The spread turns each shift into a
  weight update; what their shifts share, every job adds again, so its harm to other
  text grows with the square of the stream's length, not with its length.

The model is measured as loaded and with each given delta applied; it is left as found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from factsync.editing.requests import EditRequest
from factsync.editing.targets import TargetSettings, optimise_targets
from factsync.evaluation.intervals import Interval, bootstrap_interval, format_interval
from factsync.models.loading import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShiftReport:
    """The shifts ``z - h`` of a set of facts on one model.

    Attributes:
        label: which model (``unedited`` or a delta file).
        hidden_norm: median ``|h|``.
        shift_norm: median ``|z - h|``.
        shift_ratio: median ``|z - h| / |h|``.
        cosine: the mean cosine between two different facts' shifts, with its 95%
            bootstrap interval over facts (each fact's mean cosine with the others);
            a fact the model already answered as asked has no shift and no direction,
            and is left out.
        shared_energy: the share of the shifts' summed squared norm along their mean
            direction (about 1 / facts when they share nothing).
        steps: median optimisation steps.
        probability: median probability of the new object the optimisation reached.
        felt: median ``s^T F s / 2`` of the shifts s, F the unedited model's sensitivity
            at the layer (``editing.sensitivity``): to second order, the nats per token
            ordinary text would lose with the shift added at every token; ``None``
            when no sensitivity was given.
        felt_mean: mean ``s^T F s / 2``: what a stream of these facts costs per fact
            on average, where the median says what a usual fact costs.
        felt_top_share: the share of the summed ``s^T F s / 2`` that the costliest
            tenth of the facts (at least one) carries: about 0.1 when every fact
            costs the same, near 1 when a few facts carry the cost.
        felt_per_fact: each fact's ``s^T F s / 2``, in the order of the requests.
        harm: median cost to ordinary text of each fact's edit applied alone, nats per
            token to second order (``fact_harm``); ``None`` when not measured.
        harm_mean: its mean.
        harm_per_fact: each fact's, in the order of the requests.
        job_harm_per_job: the cost of each job's facts spread together (``batch``
            consecutive facts), in order.
        jobs_over_alone: the jobs' summed cost over their facts' summed costs alone:
            above 1 when facts spread together add up on ordinary text.
        seconds_per_fact: wall seconds of the optimisation per fact.
    """

    label: str
    hidden_norm: float
    shift_norm: float
    shift_ratio: float
    cosine: Interval
    shared_energy: float
    steps: float
    probability: float
    felt: float | None = None
    felt_mean: float | None = None
    felt_top_share: float | None = None
    felt_per_fact: list[float] | None = None
    harm: float | None = None
    harm_mean: float | None = None
    harm_per_fact: list[float] | None = None
    job_harm_per_job: list[float] | None = None
    jobs_over_alone: float | None = None
    seconds_per_fact: float = 0.0

    def to_json(self) -> dict:
        """The report as JSON numbers, the cosine as ``[mean, low, high]``."""
        return asdict(self) | {"cosine": self.cosine.as_list()}


def measure_shifts(loaded: LoadedModel, requests: Sequence[EditRequest], layer: int,
                   contexts: list[str], settings: TargetSettings, *, label: str,
                   sensitivity: torch.Tensor | None = None,
                   harm_of: Callable[[list[EditRequest], torch.Tensor],
                                     tuple[list[float], list[float]]] | None = None,
                   ) -> ShiftReport:
    """Optimise the targets of ``requests`` at ``layer`` on ``loaded`` as it is, and
    describe their shifts, in the metric of ``sensitivity`` as well when it is given
    (the ``natural`` step rule needs it), and each fact's and each job's cost to
    ordinary text when ``harm_of`` (requests, targets -> costs alone per fact, costs
    per job) is given. Raises ``ValueError`` for fewer than two requests."""
    if len(requests) < 2:
        raise ValueError("shifts are compared between facts: give at least two")
    started = time.perf_counter()
    result = optimise_targets(loaded, list(requests), layer, contexts, settings,
                              use_neighbours=False, sensitivity=sensitivity)
    seconds = time.perf_counter() - started
    log.info("%s: optimised %d targets in %.0f s", label, len(requests), seconds)
    initial, shifts = result.initial.double(), (result.z - result.initial).double()
    norms = shifts.norm(dim=1)
    moved = norms > 0
    if int(moved.sum()) < 2:
        raise ValueError("fewer than two facts needed a shift: nothing to compare")
    directions = shifts[moved] / norms[moved].unsqueeze(1)
    cosines = directions @ directions.T
    others = ~torch.eye(len(directions), dtype=torch.bool)
    per_fact = [float(cosines[i][others[i]].mean()) for i in range(len(directions))]
    mean_direction = shifts.mean(dim=0)
    along = shifts @ (mean_direction / mean_direction.norm())
    felt = (0.5 * ((shifts @ sensitivity.double()) * shifts).sum(dim=1)
            if sensitivity is not None else None)
    harms = jobs = None
    if harm_of is not None:
        alone, jobs = harm_of(list(requests), result.z)
        harms = torch.tensor(alone, dtype=torch.float64)
    return ShiftReport(
        label=label,
        hidden_norm=float(initial.norm(dim=1).median()),
        shift_norm=float(norms.median()),
        shift_ratio=float((norms / initial.norm(dim=1)).median()),
        cosine=bootstrap_interval(per_fact),
        shared_energy=float((along**2).sum() / (norms**2).sum()),
        steps=float(torch.tensor(result.steps, dtype=torch.float64).median()),
        probability=float(torch.tensor(result.probability, dtype=torch.float64).median()),
        felt=None if felt is None else float(felt.median()),
        felt_mean=None if felt is None else float(felt.mean()),
        felt_top_share=None if felt is None else _top_share(felt),
        felt_per_fact=None if felt is None else felt.tolist(),
        harm=None if harms is None else float(harms.median()),
        harm_mean=None if harms is None else float(harms.mean()),
        harm_per_fact=None if harms is None else harms.tolist(),
        job_harm_per_job=jobs,
        jobs_over_alone=None if harms is None else float(sum(jobs) / harms.sum()),
        seconds_per_fact=seconds / len(requests),
    )


def _top_share(costs: torch.Tensor) -> float:
    """The share of ``costs``' sum that its largest tenth (at least one) holds."""
    top = max(1, len(costs) // 10)
    return float(costs.topk(top).values.sum() / costs.sum())


def format_shifts(reports: Sequence[ShiftReport]) -> str:
    """One row per model; the ``s^T F s / 2`` columns (median, mean, the costliest
    tenth's share) and the harm columns (median, mean) when the reports have them."""
    felt = any(r.felt is not None for r in reports)
    harm = any(r.harm is not None for r in reports)
    lines = ["model | |h| | |z-h| | |z-h|/|h| | cosine between facts | shared energy | "
             "steps | probability | s/fact"
             + (" | s^T F s / 2 | mean | top tenth's share" if felt else "")
             + (" | harm alone | mean | jobs over alone" if harm else ""),
             " | ".join(["---"] * (9 + 3 * felt + 3 * harm))]
    for r in reports:
        row = (f"{r.label} | {r.hidden_norm:.2f} | {r.shift_norm:.2f} | "
               f"{r.shift_ratio:.3f} | {format_interval(r.cosine)} | "
               f"{r.shared_energy:.3f} | {r.steps:.0f} | {r.probability:.3f} | "
               f"{r.seconds_per_fact:.2f}")
        if felt:
            row += (" | - | - | -" if r.felt is None else
                    f" | {r.felt:.4f} | {r.felt_mean:.4f} | {r.felt_top_share:.3f}")
        if harm:
            row += (" | - | - | -" if r.harm is None else
                    f" | {r.harm:.2e} | {r.harm_mean:.2e} | {r.jobs_over_alone:.3f}")
        lines.append(row)
    return "\n".join(lines)
