"""``factsync bench budget``: how edit quality changes with the key-statistics budget.

Statistics are computed over the first ``budget`` tokens of one corpus for each budget,
compared with those of the largest budget, and each set drives the same single-pass
MEMIT edits of the same COUNTERFACT records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from factsync.bench.counterfact import MethodRow, run_counterfact
from factsync.editing.covariance import compute_key_statistics
from factsync.editing.engine import EngineSettings
from factsync.evaluation.cases import EvalCase
from factsync.models.loading import LoadedModel


@dataclass(frozen=True)
class BudgetRow:
    """One budget's statistics and the edits they gave.

    Attributes:
        budget: tokens counted.
        seconds: time to compute the statistics of every edit layer.
        moment_error: mean over layers of ``|C - C_ref|_F / |C_ref|_F`` against the
            largest budget.
        lambda_mean: mean over layers of the derived MEMIT lambda.
        edits: the benchmark row of the edits made with these statistics.
    """

    budget: int
    seconds: float
    moment_error: float
    lambda_mean: float
    edits: MethodRow


def run_budget_study(
    loaded: LoadedModel,
    cases: list[EvalCase],
    budgets: list[int],
    *,
    texts: list[str],
    settings: EngineSettings,
    contexts: list[str],
    fluency_texts: list[str],
    batch_size: int,
) -> list[BudgetRow]:
    """Statistics at each budget (ascending) and single-pass edits made with them."""
    layers = settings.edit_layers(loaded)
    fraction = settings.spread.update_fraction
    computed = {}
    for budget in sorted(budgets):
        started = time.monotonic()
        stats = compute_key_statistics(loaded, layers, texts, token_budget=budget)
        computed[budget] = (stats, time.monotonic() - started)
    reference = computed[max(budgets)][0]
    rows = []
    for budget, (stats, seconds) in computed.items():
        error = sum(
            float(
                torch.linalg.norm(stats[layer].second_moment - reference[layer].second_moment)
                / torch.linalg.norm(reference[layer].second_moment)
            )
            for layer in layers
        ) / len(layers)
        lambdas = [
            stats[layer].median_mahalanobis() * (1 - fraction) / fraction for layer in layers
        ]
        edits = run_counterfact(
            loaded,
            cases,
            {"memit": settings},
            statistics=stats,
            contexts=contexts,
            fluency_texts=fluency_texts,
            batch_size=batch_size,
        )["memit"]
        rows.append(BudgetRow(budget, seconds, error, sum(lambdas) / len(lambdas), edits))
    return rows


def format_budget_table(rows: list[BudgetRow]) -> str:
    """A plain-text table, one row per budget."""
    lines = [
        "tokens | stats s | C rel.err | lambda | eff.succ | para.succ | nbhd.succ | ppl.ratio",
        "------ | ------- | --------- | ------ | -------- | --------- | --------- | ---------",
    ]
    for row in rows:
        edits = row.edits
        lines.append(
            f"{row.budget} | {row.seconds:.1f} | {row.moment_error:.3f} | {row.lambda_mean:.0f} | "
            f"{edits.mean('efficacy_success') or 0:.3f} | "
            f"{edits.mean('paraphrase_success') or 0:.3f} | "
            f"{edits.mean('neighbourhood_success') or 0:.3f} | {edits.perplexity_ratio:.4f}"
        )
    return "\n".join(lines)
