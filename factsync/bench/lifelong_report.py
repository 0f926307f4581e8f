"""``bench lifelong`` results as a plain-text table and as the JSON report."""

from __future__ import annotations

from collections import Counter

from factsync.bench.job_fluency import JobReading, format_job_fluency
from factsync.bench.lifelong import LifelongRun, MethodRun
from factsync.bench.lifelong_scoring import METRICS, Checkpoint
from factsync.bench.tables import aligned
from factsync.evaluation.intervals import Interval, format_interval

ALIASES = {
    "neighborhood_success": "neighbourhood_success",
    "neighborhood_accuracy": "neighbourhood_accuracy",
}
"""American spellings that older tools read, each with the value of the metric it names."""

SHORT_NAMES = {
    "efficacy_success": "eff.succ",
    "efficacy_accuracy": "eff.acc",
    "paraphrase_success": "para.succ",
    "paraphrase_accuracy": "para.acc",
    "neighbourhood_success": "nbhd.succ",
    "neighbourhood_accuracy": "nbhd.acc",
    "perplexity_ratio": "ppl.ratio",
    "held_out_perplexity_ratio": "ppl.held",
    "canary": "canary",
    "norm_growth_max": "norm.max",
    "norm_growth_mean": "norm.mean",
    "seconds_per_fact": "s/fact",
}
"""Column headers of the checkpoint tables, one per metric of ``METRICS``."""


def to_json(run: LifelongRun) -> dict:
    """The run as ``{"n", "batch", "dataset", "unedited", "unedited_intervals", "methods":
    {name: {"final", "intervals", "checkpoints"}}}``, every metric also under its alias
    (``from_json`` reads it back, less the intervals of checkpoints before the last)."""
    return {
        "n": run.n,
        "batch": run.batch,
        "dataset": run.dataset,
        "unedited": _with_aliases(run.unedited.values),
        "unedited_intervals": _bounds(run.unedited),
        "methods": {name: _method_json(method) for name, method in run.methods.items()},
    }


def from_json(report: dict) -> LifelongRun:
    """The run a ``to_json`` report holds: every checkpoint's values, the final
    checkpoint's intervals and the unedited model's (none in reports written before
    they were). Facts changed back are left out.

    Raises ``ValueError`` naming what in the report is missing or malformed.
    """
    try:
        n = report["n"]
        run = LifelongRun(dataset=report.get("dataset", "counterfact"), n=n,
                          batch=report["batch"],
                          unedited=_checkpoint(n, report["unedited"],
                                               report.get("unedited_intervals", {})))
        for name, method in report["methods"].items():
            *earlier, last = method["checkpoints"]
            run.methods[name] = MethodRun(
                [_checkpoint(c["facts"], c, {}) for c in earlier]
                + [_checkpoint(last["facts"], last, method.get("intervals", {}))],
                refused=method.get("refused", []),
                repaired=[(place, canary) for place, canary in method.get("repaired", [])],
                refreshed=[(job, place) for job, place in method.get("refreshed", [])],
                job_fluency=[JobReading.from_json(r) for r in method.get("job_fluency", [])])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a bench lifelong report ({type(exc).__name__}: {exc})") from exc
    return run


def _checkpoint(facts: int, values: dict, bounds: dict) -> Checkpoint:
    return Checkpoint(facts=facts, values={m: values.get(m) for m in METRICS},
                      intervals={m: Interval(values[m], *bounds[m])
                                 for m in METRICS if m in bounds and values.get(m) is not None})


def _method_json(method: MethodRun) -> dict:
    final = method.final
    numbers = {
        "final": _with_aliases(final.values),
        "intervals": _bounds(final),
        "checkpoints": [{"facts": c.facts} | _with_aliases(c.values) for c in method.checkpoints],
        "refused": method.refused,
        "repaired": [list(pair) for pair in method.repaired],
        "refreshed": [list(pair) for pair in method.refreshed],
        "job_fluency": [reading.to_json() for reading in method.job_fluency],
    }
    if method.changed_back is not None:
        changed, rest = method.changed_back.changed, method.changed_back.rest
        numbers["changed_back"] = {
            "facts": changed.facts,
            "changed": _with_aliases(changed.values), "changed_intervals": _bounds(changed),
            "rest": _with_aliases(rest.values), "rest_intervals": _bounds(rest),
        }
    return numbers


def _bounds(checkpoint: Checkpoint) -> dict:
    return _with_aliases({name: [i.low, i.high] for name, i in checkpoint.intervals.items()})


def _with_aliases(values: dict) -> dict:
    return values | {alias: values[name] for alias, name in ALIASES.items() if name in values}


def format_table(run: LifelongRun) -> str:
    """One row per metric, one column per model: the unedited one, then each method's
    final checkpoint, with the 95% interval where there is one."""
    return _metric_table({"unedited": run.unedited} | {n: m.final for n, m in run.methods.items()})


def format_interventions(run: LifelongRun) -> str:
    """What each method did besides applying its jobs as they came: one line per method
    that refused facts to keep its canaries, naming their places in the stream; one per
    method that stated canaries again, naming them and where; one per method that stated
    applied facts again (``--refresh-worn``), counting them. Empty when no method did
    any of these."""
    lines = []
    for name, method in run.methods.items():
        if method.refused:
            places = ", ".join(f"#{place}" for place in method.refused)
            lines.append(f"{name} refused {len(method.refused)} of {method.final.facts} facts "
                         f"to keep its canaries (left unedited, scored as failed): {places}")
        if method.repaired:
            repairs = "; ".join(f"{canary} (job from #{place})"
                                for place, canary in method.repaired)
            lines.append(f"{name} stated {len(method.repaired)} lost canaries again in the "
                         f"job that lost them: {repairs}")
        if method.refreshed:
            times = Counter(place for _, place in method.refreshed)
            place, most = times.most_common(1)[0]
            lines.append(f"{name} stated {len(method.refreshed)} applied facts again in "
                         "later jobs, worn or sharing a subject with a fact written: "
                         f"{len(times)} distinct facts, #{place} most often ({most} times)")
    return "\n".join(lines)


def format_fluency_by_job(run: LifelongRun) -> str:
    """Per method that read the fluency texts after every job, what its jobs added to
    their NLL (``job_fluency.format_job_fluency``); empty when none did."""
    return "\n\n".join(f"{name}:\n{format_job_fluency(method.job_fluency)}"
                       for name, method in run.methods.items() if method.job_fluency)


def format_changed_back(run: LifelongRun) -> str:
    """Per method that changed facts back, a column for the changed-back records (against
    their old objects; the seconds are the change-back jobs') and one for the others and
    the model as a whole; empty when no method did."""
    columns: dict[str, Checkpoint] = {}
    for name, method in run.methods.items():
        if method.changed_back is not None:
            count = method.changed_back.changed.facts
            columns[f"{name}: the {count} changed back"] = method.changed_back.changed
            columns[f"{name}: the rest"] = method.changed_back.rest
    if not columns:
        return ""
    return "after changing back the first facts:\n" + _metric_table(columns)


def _metric_table(columns: dict[str, Checkpoint]) -> str:
    """One row per metric, one column per checkpoint, with the 95% interval where there
    is one."""
    header = ["metric", *columns]
    rows = [[metric, *(_cell(c, metric) for c in columns.values())] for metric in METRICS]
    return aligned(header, rows)


def format_checkpoints(run: LifelongRun) -> str:
    """Per method, one row per checkpoint with the mean of each metric it has: how every
    fact applied so far, and the model around them, fared as the facts piled up."""
    blocks = []
    for name, method in run.methods.items():
        metrics = [m for m in METRICS
                   if any(c.values[m] is not None for c in method.checkpoints)]
        header = ["facts", *(SHORT_NAMES[m] for m in metrics)]
        rows = [[str(c.facts), *(_mean(c.values[m]) for m in metrics)]
                for c in method.checkpoints]
        blocks.append(f"{name}, by checkpoint:\n{aligned(header, rows)}")
    return "\n\n".join(blocks)


def _mean(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cell(checkpoint: Checkpoint, metric: str) -> str:
    value = checkpoint.values[metric]
    if value is None:
        return "-"
    interval = checkpoint.intervals.get(metric)
    return format_interval(interval) if interval is not None else f"{value:.3f}"
