"""Each KPI across versions, drawn on the server as SVG with matplotlib.

Every chart is its own ``Figure`` on an Agg canvas, so requests drawing at once in the
server's threads share no pyplot state.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from factsync.kpis.report import KpiReport, Metric
from factsync.store.records import VERSION_ROLLED_BACK, Version

STYLES = {
    "promoted": {"marker": "o", "color": "#2f6db3", "s": 28},
    "rolled back": {"marker": "x", "color": "#b3382f", "s": 34},
    "live": {"marker": "*", "color": "#1f8a3b", "s": 110},
}
"""Marker of each kind of version (matplotlib ``scatter`` keywords)."""


def charted_metrics(versions: Sequence[Version]) -> list[Metric]:
    """The metrics some version's report holds a candidate value of, in ``Metric`` order."""
    measured = set()
    for version in versions:
        values = KpiReport.candidate_values(version.report).values
        measured.update(m for m, v in values.items() if v is not None)
    return [m for m in Metric if m in measured]


def kpi_chart(versions: Sequence[Version], metric: Metric, *, live_id: str) -> bytes:
    """An SVG of ``metric``'s candidate value in each version's report against the
    version's sequence number, marking the live version and rolled-back ones."""
    points = sorted(
        (v.seq, value, _kind(v, live_id)) for v in versions
        if (value := KpiReport.candidate_values(v.report).get(metric)) is not None
    )
    figure = Figure(figsize=(4.4, 2.6))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], color="#999999",
                linewidth=1, zorder=1)
        for kind, style in STYLES.items():
            chosen = [p for p in points if p[2] == kind]
            if chosen:
                ax.scatter([p[0] for p in chosen], [p[1] for p in chosen], label=kind,
                           zorder=2, **style)
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "not measured yet", ha="center", va="center", transform=ax.transAxes)
    if metric is not Metric.PERPLEXITY_RATIO:
        ax.set_ylim(-0.05, 1.05)  # a share of facts or prompts: the whole scale, always
    ax.set_title(metric.value, fontsize=10)
    ax.set_xlabel("version (seq)", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg")
    return buffer.getvalue()


class ChartCache:
    """The last chart drawn of each metric, reused while the versions it shows, their
    statuses and the live version are the same (drawing one takes about 0.1 s of CPU)."""

    def __init__(self) -> None:
        self._drawn: dict[Metric, tuple[tuple, bytes]] = {}
        self._lock = threading.Lock()

    def chart(self, versions: Sequence[Version], metric: Metric, *, live_id: str) -> bytes:
        """``kpi_chart(versions, metric, live_id=live_id)``, drawn again only if needed."""
        # A version's report never changes once written; its status does, on rollback.
        key = (live_id, tuple((v.id, v.status) for v in versions))
        with self._lock:
            drawn = self._drawn.get(metric)
        if drawn is not None and drawn[0] == key:
            return drawn[1]
        svg = kpi_chart(versions, metric, live_id=live_id)
        with self._lock:
            self._drawn[metric] = (key, svg)
        return svg


def _kind(version: Version, live_id: str) -> str:
    if version.id == live_id:
        return "live"
    return "rolled back" if version.status == VERSION_ROLLED_BACK else "promoted"
