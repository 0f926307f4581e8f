"""The lifelong plot: one colour per method in every panel."""

from __future__ import annotations

from matplotlib.colors import to_hex

from factsync.bench.lifelong import LifelongRun, MethodRun
from factsync.bench.lifelong_plot import lifelong_figure
from factsync.bench.lifelong_scoring import METRICS, Checkpoint


def _checkpoint(facts: int, **values: float) -> Checkpoint:
    return Checkpoint(facts=facts, values={m: values.get(m) for m in METRICS}, intervals={})


def test_a_method_keeps_its_colour_where_an_earlier_one_measured_nothing():
    without = MethodRun([_checkpoint(5, efficacy_success=0.9),
                         _checkpoint(10, efficacy_success=0.8)])
    held_out = MethodRun([_checkpoint(5, efficacy_success=0.7, held_out_perplexity_ratio=1.1),
                          _checkpoint(10, efficacy_success=0.6,
                                      held_out_perplexity_ratio=1.2)])
    run = LifelongRun(dataset="zsre", n=10, batch=5,
                      unedited=_checkpoint(10, efficacy_success=0.4,
                                           held_out_perplexity_ratio=1.0),
                      methods={"without": without, "held out": held_out})
    axes = lifelong_figure(run).axes
    panels = {ax.get_title(): ax for ax in axes}

    def colours(metric: str) -> dict[str, str]:
        return {line.get_label(): to_hex(line.get_color())
                for line in panels[metric].get_lines() if line.get_label() != "unedited"}

    efficacy, held = colours("efficacy_success"), colours("held_out_perplexity_ratio")
    assert efficacy["without"] != efficacy["held out"]
    assert held == {"held out": efficacy["held out"]}
    legend = next(ax.get_legend() for ax in axes if ax.get_legend() is not None)
    assert [text.get_text() for text in legend.get_texts()] == ["without", "held out",
                                                                "unedited"]
    assert [to_hex(line.get_color()) for line in legend.get_lines()][:2] == [
        efficacy["without"], efficacy["held out"]]
