"""Progress bars on long scoring: where a caller asks for them, and nowhere else."""

from __future__ import annotations

import pytest

from factsync.evaluation.fluency import text_nlls
from factsync.models.scoring import score_targets, scoring_progress
from factsync.models.text import PromptSpec, object_ids


def _rows(loaded, count: int) -> list[PromptSpec]:
    return [PromptSpec("{}", f"The capital of France is {i}", object_ids(loaded, "Paris"))
            for i in range(count)]


def test_a_long_scoring_shows_its_bar_inside_the_block(
    tiny_loaded, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = tiny_loaded()
    rows = _rows(loaded, 24)

    quiet = score_targets(loaded, rows, batch_size=1)
    assert "checkpoint" not in capsys.readouterr().err
    with scoring_progress("checkpoint"):
        shown = score_targets(loaded, rows, batch_size=1)
        score_targets(loaded, rows[:3], batch_size=1)  # three batches: too short for a bar

    bars = capsys.readouterr().err
    # A bar is drawn when it starts; later redraws depend on how fast the batches go.
    assert "checkpoint:   0%" in bars and "0/24" in bars and "/3" not in bars
    assert shown == quiet


def test_a_long_fluency_pass_shows_its_bar_inside_the_block(
    tiny_loaded, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = tiny_loaded()
    texts = [f"Text number {i} is about rivers and their bridges." for i in range(24)]

    quiet = text_nlls(loaded, texts, batch_size=1)
    assert "held-out" not in capsys.readouterr().err
    with scoring_progress("held-out"):
        shown = text_nlls(loaded, texts, batch_size=1)

    assert "held-out:   0%" in capsys.readouterr().err
    assert shown == quiet
