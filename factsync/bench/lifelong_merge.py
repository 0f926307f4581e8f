"""Several saved ``bench lifelong`` runs of the same records as one report.

A run's methods go one after another, so a comparison that grows later (a new method
beside ones already measured) is a second run on the same records. Its unedited model is
measured again; when that measurement equals the first run's, the two runs scored the
same records the same way and their methods belong in one table. A metric only one of
them measured (a later run scoring a held-out text set the first did not) cannot
disagree: the merged unedited model has it from the run that did. A method measured in
two runs (the same name under other key statistics, say) keeps both columns, the later
one named after its run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath

from factsync.bench.lifelong import LifelongRun
from factsync.bench.lifelong_scoring import Checkpoint

TOLERANCE = 1e-6
"""Relative difference allowed between two runs' unedited metrics: the same records
scored by the same code agree to rounding."""


def merge_runs(runs: Mapping[str, LifelongRun]) -> LifelongRun:
    """One run holding every method of ``runs`` (keyed by where each was read from), in
    order. A method already there from an earlier run is added as ``"name (run)"``, the
    run being the last part of its path without a suffix.

    Raises ``ValueError`` naming the first run and the one that differs when their
    dataset or sizes differ, or an unedited metric both measured, or when even that
    name is taken.
    """
    if not runs:
        raise ValueError("no runs to merge")
    (first_source, first), *others = runs.items()
    merged = LifelongRun(dataset=first.dataset, n=first.n, batch=first.batch,
                         unedited=first.unedited, methods=dict(first.methods))
    for source, run in others:
        difference = _difference(first, run)
        if difference:
            raise ValueError(f"{source} is not a run of the same records as {first_source}: "
                             f"{difference}")
        merged.unedited = _either(merged.unedited, run.unedited)
        for name, method in run.methods.items():
            if name in merged.methods:
                name = f"{name} ({PurePath(source).stem})"
            if name in merged.methods:
                raise ValueError(f"method {name} is in more than one run ({source})")
            merged.methods[name] = method
    return merged


def _difference(first: LifelongRun, other: LifelongRun) -> str:
    """What tells ``other`` apart from ``first`` as a measurement, or ``""``."""
    for field in ("dataset", "n", "batch"):
        if getattr(first, field) != getattr(other, field):
            return f"{field} {getattr(other, field)} against {getattr(first, field)}"
    ours, theirs = first.unedited.values, other.unedited.values
    for metric, value in ours.items():
        their_value = theirs.get(metric)
        if value is not None and their_value is not None and not math.isclose(
                value, their_value, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
            return f"unedited {metric} {their_value} against {value}"
    return ""


def _either(first: Checkpoint, other: Checkpoint) -> Checkpoint:
    """``first``, with the metrics only ``other`` measured (and their intervals) added."""
    added = [metric for metric, value in other.values.items()
             if value is not None and first.values.get(metric) is None]
    return Checkpoint(facts=first.facts,
                      values=first.values | {metric: other.values[metric] for metric in added},
                      intervals=first.intervals | {metric: other.intervals[metric]
                                                   for metric in added
                                                   if metric in other.intervals})
