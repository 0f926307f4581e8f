"""The lifelong plot: one colour per method in every panel, and the fluency texts read
after each job."""

from __future__ import annotations

from matplotlib.colors import to_hex

from factsync.bench.job_fluency import JobReading
from factsync.bench.lifelong import LifelongRun, MethodRun
from factsync.bench.lifelong_plot import JOB_FLUENCY_TITLE, lifelong_figure
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


def _run(**methods: MethodRun) -> LifelongRun:
    return LifelongRun(dataset="counterfact", n=20, batch=10,
                       unedited=_checkpoint(20, efficacy_success=0.2), methods=methods)


def test_each_methods_job_readings_are_drawn_in_its_colour_against_zero():
    readings = [JobReading(10, 0.5, 4.0), JobReading(20, 0.25, 9.0)]
    run = _run(unread=MethodRun([_checkpoint(20, efficacy_success=0.9)]),
               read=MethodRun([_checkpoint(20, efficacy_success=0.8)], job_fluency=readings))
    panels = {ax.get_title(): ax for ax in lifelong_figure(run).axes}
    lines = {line.get_label(): line for line in panels[JOB_FLUENCY_TITLE].get_lines()}
    assert set(lines) == {"read", "read, first token", "unedited"}
    assert list(lines["read"].get_xdata()) == [10, 20]
    assert list(lines["read"].get_ydata()) == [4.0, 9.0]
    assert list(lines["read, first token"].get_ydata()) == [0.5, 0.25]
    assert list(lines["unedited"].get_ydata()) == [0.0, 0.0]
    efficacy = {line.get_label(): to_hex(line.get_color())
                for line in panels["efficacy_success"].get_lines()}
    assert to_hex(lines["read"].get_color()) == efficacy["read"] != efficacy["unread"]


def test_a_run_without_job_readings_says_so_in_their_panel():
    run = _run(memit=MethodRun([_checkpoint(20, efficacy_success=0.9)]))
    panel = next(ax for ax in lifelong_figure(run).axes if ax.get_title() == JOB_FLUENCY_TITLE)
    assert panel.get_lines() == []
    assert [text.get_text() for text in panel.texts] == ["not measured"]
