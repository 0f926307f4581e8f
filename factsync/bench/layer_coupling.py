"""``bench coupling``: the per-layer spread against the joint one (``joint_spread``),
fact by fact, on what each costs ordinary text for the shift it achieves.

Each fact's target is spread alone, once per way of spreading. Two numbers describe
the result:

- its harm: ``mean_t d_t^T F d_t / 2`` on probe tokens of ordinary text, d_t the change
  of the last edit layer's output (``fact_harm``);
- its achieved share: ``<dh, r> / |r|^2`` on the bare prompt, r = z - h the shift the
  target asked for and dh the shift the update made.

A weaker update harms less and achieves less, and the harm grows with the square of
the shift, so spreads are compared on harm per squared achieved share: the harm of the
whole shift, were the update scaled up to achieve it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from factsync.bench.fact_harm import TextProbe
from factsync.bench.tables import aligned
from factsync.editing.delta import ModelDelta, applied
from factsync.editing.keys import subject_outputs
from factsync.evaluation.intervals import Interval, bootstrap_interval
from factsync.models.loading import LoadedModel

Spread = Callable[[tuple[str, str], torch.Tensor], ModelDelta]
"""(template, subject), target (hidden,) -> the update of one fact's edit."""


@dataclass(frozen=True)
class SpreadCost:
    """What one fact's update does.

    Attributes:
        harm: nats per ordinary-text token, to second order.
        achieved: the share of the asked shift made on the bare prompt.
    """

    harm: float
    achieved: float

    @property
    def harm_per_shift(self) -> float:
        """Harm over the squared achieved share (infinite when nothing was achieved)."""
        return self.harm / self.achieved**2 if self.achieved > 0 else math.inf


def spread_costs(loaded: LoadedModel, prompts: list[tuple[str, str]], targets: torch.Tensor,
                 probe: TextProbe, sensitivity: torch.Tensor, spreads: dict[str, Spread], *,
                 progress: bool = True) -> dict[str, list[SpreadCost]]:
    """Per way of spreading (name -> spread), each fact's ``SpreadCost``; ``targets``
    (facts, hidden) at the probe's layer. The model is left as found."""
    metric = sensitivity.to(device=loaded.device, dtype=torch.float64)
    before = probe.hidden()
    costs: dict[str, list[SpreadCost]] = {name: [] for name in spreads}
    for prompt, target in tqdm(list(zip(prompts, targets, strict=True)), unit="fact",
                               disable=not progress, desc="each fact, every spread"):
        start = subject_outputs(loaded, [prompt], probe.layer)[0].double()
        asked = target.double().to(start) - start
        for name, spread in spreads.items():
            update = spread(prompt, target)
            with applied(loaded, update):
                change = probe.hidden() - before
                made = subject_outputs(loaded, [prompt], probe.layer)[0].double() - start
            harm = float(0.5 * ((change @ metric) * change).sum(dim=1).mean())
            achieved = float(made @ asked / (asked @ asked)) if asked.any() else 0.0
            costs[name].append(SpreadCost(harm=harm, achieved=achieved))
    return costs


@dataclass(frozen=True)
class CouplingRow:
    """One way of spreading over all facts.

    Attributes:
        name: the spread.
        harm: median harm.
        achieved: median achieved share.
        against_first: harm per squared achieved share over the first spread's, the
            geometric mean over facts with its 95% bootstrap interval.
        facts: facts compared (those where both spreads achieved a positive share).
    """

    name: str
    harm: float
    achieved: float
    against_first: Interval
    facts: int


def coupling_rows(costs: dict[str, list[SpreadCost]]) -> list[CouplingRow]:
    """Summaries of ``spread_costs``' answer, the first spread the reference."""
    if not costs:
        raise ValueError("no spreads to compare")
    reference = next(iter(costs.values()))
    rows = []
    for name, own in costs.items():
        ratios = [math.log(mine.harm_per_shift / first.harm_per_shift)
                  for mine, first in zip(own, reference, strict=True)
                  if mine.achieved > 0 and first.achieved > 0 and first.harm > 0]
        if not ratios:
            raise ValueError(f"no fact where {name!r} and the first spread both moved")
        logs = bootstrap_interval(ratios)
        rows.append(CouplingRow(
            name=name,
            harm=float(torch.tensor([c.harm for c in own]).median()),
            achieved=float(torch.tensor([c.achieved for c in own]).median()),
            against_first=Interval(math.exp(logs.mean), math.exp(logs.low), math.exp(logs.high)),
            facts=len(ratios)))
    return rows


def format_coupling(rows: list[CouplingRow]) -> str:
    """The rows as a table."""
    head = ("spread", "harm median", "achieved median",
            "harm per squared share, over the first [95%]", "facts")
    body = [(r.name, f"{r.harm:.3e}", f"{r.achieved:.3f}",
             f"{r.against_first.mean:.3f} [{r.against_first.low:.3f}, "
             f"{r.against_first.high:.3f}]", str(r.facts)) for r in rows]
    return aligned(head, body)


def coupling_json(costs: dict[str, list[SpreadCost]], rows: list[CouplingRow]) -> dict:
    """The per-fact costs and the summaries, for ``--json``."""
    return {"spreads": [{**asdict(row), "against_first": row.against_first.as_list(),
                         "per_fact": [asdict(c) for c in costs[row.name]]} for row in rows]}


def saved_method_costs(runs: dict[str, dict]) -> dict[str, list[SpreadCost]]:
    """Per saved ``--json`` answer (label -> answer), its method's own spread (the first)
    fact by fact, ready for ``coupling_rows``: so methods measured in separate runs (other
    edit layers, other targets) are compared on the same facts. Raises ``ValueError``
    when the answers are not of the same records."""
    if not runs:
        raise ValueError("no saved runs to compare")
    records = {label: (run["dataset"], run["skip"], run["n"]) for label, run in runs.items()}
    if len(set(records.values())) > 1:
        raise ValueError("the runs measured different records (dataset, skip, n): "
                         + ", ".join(f"{label} {key}" for label, key in records.items()))
    return {label: [SpreadCost(**cost) for cost in run["spreads"][0]["per_fact"]]
            for label, run in runs.items()}
