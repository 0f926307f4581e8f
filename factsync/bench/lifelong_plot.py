"""``bench lifelong`` results as one PNG: each metric against facts applied, and the
fluency texts read after every job."""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from factsync.bench.lifelong import LifelongRun
from factsync.bench.lifelong_scoring import METRICS
from factsync.durable import write_bytes

COLUMNS = 4
"""Subplots per row."""

JOB_FLUENCY_TITLE = "fluency texts' NLL change by job (nats):\nlater tokens, first token dotted"
"""The title of the panel of ``MethodRun.job_fluency``."""


def draw_plot(run: LifelongRun, path: Path) -> None:
    """Write ``lifelong_figure(run)`` as a PNG to ``path``."""
    buffer = io.BytesIO()
    lifelong_figure(run).savefig(buffer, format="png", dpi=100)
    write_bytes(path, buffer.getvalue())


def lifelong_figure(run: LifelongRun) -> Figure:
    """One subplot per metric, one line per method and the unedited value as a dashed
    reference, then one of the fluency texts read after each job. A method has one colour
    in every subplot, also where an earlier method measured nothing (a run without
    held-out texts beside one with them)."""
    colours = {name: f"C{index % 10}" for index, name in enumerate(run.methods)}
    # The metrics, the job readings, and one spare cell for the legend.
    rows = math.ceil((len(METRICS) + 2) / COLUMNS)
    figure = Figure(figsize=(4 * COLUMNS, 3 * rows))
    FigureCanvasAgg(figure)  # the Agg canvas: no display, no global pyplot state
    axes = figure.subplots(rows, COLUMNS, squeeze=False).flatten()
    for ax, metric in zip(axes, METRICS, strict=False):
        for name, method in run.methods.items():
            points = [(c.facts, c.values[metric]) for c in method.checkpoints
                      if c.values[metric] is not None]
            if points:
                facts, values = zip(*points, strict=True)
                ax.plot(facts, values, marker="o", markersize=3, color=colours[name],
                        label=name)
        reference = run.unedited.values[metric]
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="unedited")
        else:
            _not_measured(ax)
        _label(ax, metric, run.n)
    _draw_job_fluency(axes[len(METRICS)], run, colours)
    legend = axes[len(METRICS) + 1]
    legend.axis("off")
    handles = [Line2D([], [], marker="o", markersize=3, color=colour)
               for colour in colours.values()]
    handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=1))
    # Long method names may run past the legend's cell into the empty ones beside it;
    # left out of the layout, they do not squeeze the subplots.
    legend.legend(handles, [*colours, "unedited"], loc="center left",
                  fontsize=9).set_in_layout(False)
    for ax in axes[len(METRICS) + 2 :]:
        ax.set_visible(False)
    figure.suptitle(f"{run.dataset}: {run.n} facts in jobs of {run.batch}")
    figure.tight_layout()
    return figure


def _draw_job_fluency(ax: Axes, run: LifelongRun, colours: dict[str, str]) -> None:
    """Each method's job readings: its later tokens' change, and its first token's
    dotted, against the unedited model's texts (zero)."""
    read = {name: method.job_fluency for name, method in run.methods.items()
            if method.job_fluency}
    for name, readings in read.items():
        facts = [reading.facts for reading in readings]
        ax.plot(facts, [reading.later_tokens for reading in readings], color=colours[name],
                linewidth=1, label=name)
        ax.plot(facts, [reading.first_token for reading in readings], color=colours[name],
                linestyle=":", linewidth=1, label=f"{name}, first token")
    if read:
        ax.axhline(0.0, color="grey", linestyle="--", linewidth=1, label="unedited")
    else:
        _not_measured(ax)
    _label(ax, JOB_FLUENCY_TITLE, run.n)


def _not_measured(ax: Axes) -> None:
    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)


def _label(ax: Axes, title: str, n: int) -> None:
    """Facts 0 to ``n`` on the x axis, markers at the ends in full; ``title`` on top."""
    ax.set_xlim(-0.03 * n, 1.03 * n)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("facts applied", fontsize=8)
    ax.tick_params(labelsize=8)
