"""``bench lifelong`` results as one PNG: each metric against facts applied."""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from factsync.bench.lifelong import LifelongRun
from factsync.bench.lifelong_scoring import METRICS
from factsync.durable import write_bytes

COLUMNS = 4
"""Subplots per row."""


def draw_plot(run: LifelongRun, path: Path) -> None:
    """Write a PNG with one subplot per metric, one line per method and the unedited
    value as a dashed reference."""
    # One spare cell past the metrics holds the legend.
    rows = math.ceil((len(METRICS) + 1) / COLUMNS)
    figure = Figure(figsize=(4 * COLUMNS, 3 * rows))
    FigureCanvasAgg(figure)  # the Agg canvas: no display, no global pyplot state
    axes = figure.subplots(rows, COLUMNS, squeeze=False).flatten()
    for ax, metric in zip(axes, METRICS, strict=False):
        for name, method in run.methods.items():
            points = [(c.facts, c.values[metric]) for c in method.checkpoints
                      if c.values[metric] is not None]
            if points:
                facts, values = zip(*points, strict=True)
                ax.plot(facts, values, marker="o", markersize=3, label=name)
        reference = run.unedited.values[metric]
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="unedited")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(-0.03 * run.n, 1.03 * run.n)  # 0 to n, markers at the ends in full
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("facts applied", fontsize=8)
        ax.tick_params(labelsize=8)
    legend = axes[len(METRICS)]
    legend.axis("off")
    legend.legend(*axes[0].get_legend_handles_labels(), loc="center")
    for ax in axes[len(METRICS) + 1 :]:
        ax.set_visible(False)
    figure.suptitle(f"{run.dataset}: {run.n} facts in jobs of {run.batch}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_bytes(path, buffer.getvalue())
