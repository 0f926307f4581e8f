"""``bench damage --tokens``: which fluency tokens carry a delta's perplexity harm."""

from __future__ import annotations

import math

import pytest

from factsync.bench.token_damage import (
    format_token_damage,
    share_carried,
    token_changes,
    token_damage_json,
)
from factsync.editing.delta import ModelDelta, applied
from factsync.evaluation.fluency import perplexity_ratio, text_nlls, token_nlls

TEXTS = ["Dear customer, thank you for your order from Paris.",
         "Danielle Darrieux was a French actress whose mother tongue is French."]


def changes_of(loaded, delta: ModelDelta):
    """``token_changes`` of ``delta`` on ``TEXTS``."""
    before = token_nlls(loaded, TEXTS)
    with applied(loaded, delta):
        return token_changes(loaded, before, token_nlls(loaded, TEXTS))


def test_the_token_changes_add_up_to_the_perplexity_ratio(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    delta = random_delta(loaded, [1, 2], rank=3, scale=0.5)
    changes = changes_of(loaded, delta)
    base = text_nlls(loaded, TEXTS)
    with applied(loaded, delta):
        ratio = perplexity_ratio(text_nlls(loaded, TEXTS), base)
    assert len(changes) == sum(tokens for _, tokens in base)
    net = sum(c.change for c in changes)
    assert math.exp(net / len(changes)) == pytest.approx(ratio.mean, rel=1e-4)
    assert [c.change for c in changes] == sorted((c.change for c in changes), reverse=True)
    assert {c.text for c in changes} == {0, 1}
    assert share_carried(changes, [len(changes)]) == {len(changes): pytest.approx(1.0)}
    top = share_carried(changes, [1])[1]
    assert top == pytest.approx(changes[0].change / net)


def test_the_report_names_the_largest_rises(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    changes = changes_of(loaded, random_delta(loaded, [1], scale=0.5))
    printed = format_token_damage(changes, [5], shown=3)
    assert f"{len(changes)} scored tokens" in printed
    assert f"{changes[0].change:+.2f} | {changes[0].before:.2f}" in printed
    assert printed.count("\n") == 2 + 3
    numbers = token_damage_json(changes, [5], shown=3)
    assert [row["change"] for row in numbers["largest"]] == [c.change for c in changes[:3]]
    assert set(numbers["share_carried"]) == {"5"}


def test_a_delta_that_changes_nothing_has_no_share_to_give(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    changes = changes_of(loaded, random_delta(loaded, [1], scale=0.0))
    assert all(c.change == 0 for c in changes)
    with pytest.raises(ValueError, match="no token"):
        share_carried(changes, [5])
