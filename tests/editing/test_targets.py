"""The target-vector optimisation: facts share each step's tensors, not their paths."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from factsync.editing import targets
from factsync.editing.engine import EditEngine
from factsync.editing.requests import EditRequest
from factsync.editing.targets import TargetSettings, optimise_targets, phrasing_rows
from factsync.models.hooks import add_at_positions
from factsync.models.scoring import batch_scores
from factsync.models.text import PromptSpec, encode, object_ids

QUICK = EditRequest("Danielle Darrieux", "The mother tongue of {} is", "Italy", "French")
SLOW = EditRequest("LinkedIn", "{} is owned by", "Apple", "Microsoft")


def test_a_fact_that_stops_early_ends_where_it_would_alone(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    # On this tiny model the first fact reaches the stop loss after a few steps, the
    # second never does: it runs on for all 80 while the first stays where it stopped.
    settings = replace(engine.settings.target, steps=80, stop_nll=5.5, learning_rate=0.5)
    layer = engine.layers[-1]
    together = optimise_targets(engine.loaded, [QUICK, SLOW], layer, engine.contexts, settings,
                                use_neighbours=False)
    assert together.steps[0] < 20 and together.steps[1] == 80
    for position, request in enumerate([QUICK, SLOW]):
        alone = optimise_targets(engine.loaded, [request], layer, engine.contexts, settings,
                                 use_neighbours=False)
        assert alone.steps == [together.steps[position]]
        # Alone its prompts are padded differently: equal up to float rounding.
        torch.testing.assert_close(alone.z[0], together.z[position], atol=1e-4, rtol=1e-3)


def test_the_normalised_rule_steps_a_fixed_share_of_the_hidden_norm(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    layer = engine.layers[-1]
    one_step = replace(engine.settings.target, steps=1, stop_nll=1e-6, learning_rate=0.05,
                       step_rule="normalised", weight_decay=0.0)
    result = optimise_targets(engine.loaded, [QUICK, SLOW], layer, engine.contexts, one_step,
                              use_neighbours=False)
    lengths = (result.z - result.initial).norm(dim=1)
    torch.testing.assert_close(lengths, 0.05 * result.initial.norm(dim=1))


def test_the_normalised_rule_reaches_the_stop_loss(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    layer = engine.layers[-1]
    settings = replace(engine.settings.target, steps=80, stop_nll=5.5, learning_rate=0.1,
                       step_rule="normalised")
    result = optimise_targets(engine.loaded, [QUICK], layer, engine.contexts, settings,
                              use_neighbours=False)
    assert 0 < result.steps[0] < 80  # it had to move, and it got there


def _nll_with_shift(loaded, layer: int, request: EditRequest, template: str,
                    shift: torch.Tensor, context: str = "") -> float:
    """Mean NLL of the new object after ``context`` and ``template``, ``shift`` added at
    the subject."""
    batch = encode(loaded, [PromptSpec(template, request.subject,
                                       object_ids(loaded, request.new_object), context)])
    where = (torch.tensor([0]), batch.subject_last, shift.unsqueeze(0))
    with torch.no_grad(), add_at_positions(loaded, layer, lambda: where):
        return batch_scores(loaded, batch).nll.item()


def _mean_rewrite_nll(engine, layer: int, shift: torch.Tensor) -> float:
    """QUICK's stop loss with ``shift`` at its subject: the mean over its context prefixes."""
    return sum(_nll_with_shift(engine.loaded, layer, QUICK, QUICK.template, shift, context)
               for context in engine.contexts) / len(engine.contexts)


def test_refining_the_last_step_ends_the_shift_just_past_the_stop(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    layer = engine.layers[-1]
    # Long steps: the last one overshoots the stop loss by far.
    coarse = replace(engine.settings.target, steps=80, stop_nll=5.5, learning_rate=0.5,
                     step_rule="normalised", weight_decay=0.0)

    def shift(settings) -> tuple[torch.Tensor, int]:
        result = optimise_targets(engine.loaded, [QUICK], layer, engine.contexts, settings,
                                  use_neighbours=False)
        return result.z[0] - result.initial[0], result.steps[0]

    end, steps = shift(coarse)
    refined, refined_steps = shift(replace(coarse, refine_steps=6))
    # The same path one step shorter: where the last step started.
    start, _ = shift(replace(coarse, steps=steps - 1, stop_nll=1e-6))
    assert refined_steps == steps > 0
    along = end - start
    share = float((refined - start) @ along / (along @ along))
    torch.testing.assert_close(refined, start + share * along, atol=1e-4, rtol=1e-4)
    assert 0 < share < 1
    assert _mean_rewrite_nll(engine, layer, refined) < 5.5
    assert _mean_rewrite_nll(engine, layer, start + (share - 2**-6) * along) >= 5.5
    assert _mean_rewrite_nll(engine, layer, start) >= 5.5


def test_refining_leaves_facts_that_never_reach_the_stop_where_they_end(
        tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    settings = replace(engine.settings.target, steps=6, stop_nll=1e-6, learning_rate=0.1,
                       step_rule="normalised")
    layer = engine.layers[-1]
    plain = optimise_targets(engine.loaded, [QUICK, SLOW], layer, engine.contexts, settings,
                             use_neighbours=False)
    refined = optimise_targets(engine.loaded, [QUICK, SLOW], layer, engine.contexts,
                               replace(settings, refine_steps=4), use_neighbours=False)
    torch.testing.assert_close(refined.z, plain.z)


def test_negative_refine_steps_are_refused(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    with pytest.raises(ValueError, match="refine_steps must not be negative"):
        replace(engine.settings.target, refine_steps=-1)


def test_training_on_phrasings_carries_the_edit_to_them(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    layer = engine.layers[-1]
    phrasing = "The first language spoken by {} was"
    request = replace(QUICK, phrasings=(phrasing,))
    fixed = replace(engine.settings.target, steps=30, stop_nll=1e-6, learning_rate=0.1,
                    step_rule="normalised")
    nll = {}
    for trained in (False, True):
        result = optimise_targets(engine.loaded, [request], layer, engine.contexts,
                                  replace(fixed, train_phrasings=trained), use_neighbours=False)
        shift = result.z[0] - result.initial[0]
        nll[trained] = _nll_with_shift(engine.loaded, layer, request, phrasing, shift)
    unedited = _nll_with_shift(engine.loaded, layer, request, phrasing,
                               torch.zeros_like(result.z[0]))
    assert nll[True] < nll[False] and nll[True] < unedited


def test_phrasings_under_context_prefixes_carry_the_edit_to_prefixed_phrasings(
        tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    layer = engine.layers[-1]
    phrasing = "The first language spoken by {} was"
    request = replace(QUICK, phrasings=(phrasing,))
    fixed = replace(engine.settings.target, steps=30, stop_nll=1e-6, learning_rate=0.1,
                    step_rule="normalised", train_phrasings=True)
    context = engine.contexts[-1]
    nll = {}
    for prefixed in (False, True):
        result = optimise_targets(engine.loaded, [request], layer, engine.contexts,
                                  replace(fixed, phrasing_contexts=prefixed),
                                  use_neighbours=False)
        nll[prefixed] = _nll_with_shift(engine.loaded, layer, request, phrasing,
                                        result.z[0] - result.initial[0], context)
    assert nll[True] < nll[False]


def test_rows_grouped_by_width_reach_the_targets_of_one_padded_batch(
        tiny_loaded, tiny_engine, monkeypatch):
    # Free passes: every width runs as its own group.
    monkeypatch.setattr(targets, "GROUP_OVERHEAD", 0)
    engine = tiny_engine(tiny_loaded("llama"))
    layer = engine.layers[-1]
    # Phrasings that end soon after the subject and long after it: rows of many widths.
    requests = [replace(QUICK, phrasings=("{} spoke", "The first language that {} ever spoke was")),
                replace(SLOW, phrasings=("{} belongs to",))]
    settings = replace(engine.settings.target, steps=12, stop_nll=1e-6, learning_rate=0.1,
                       step_rule="normalised", train_phrasings=True, phrasing_contexts=True)
    results = [optimise_targets(engine.loaded, requests, layer, engine.contexts,
                                replace(settings, group_by_width=grouped), use_neighbours=False)
               for grouped in (True, False)]
    assert results[0].steps == results[1].steps
    torch.testing.assert_close(results[0].z, results[1].z, atol=1e-4, rtol=1e-3)
    assert results[0].probability == pytest.approx(results[1].probability, abs=1e-4)


def test_dealt_prefixes_meet_every_phrasing_bare_and_each_prefix_once():
    contexts = ["", "A. ", "B. ", "C. ", "D. ", "E. "]
    settings = TargetSettings(train_phrasings=True, phrasing_contexts=True,
                              deal_phrasing_contexts=True)
    rows = phrasing_rows(("{} spoke", "{} talked"), contexts, settings)
    assert rows == [("{} spoke", ""), ("{} spoke", "A. "), ("{} spoke", "C. "),
                    ("{} spoke", "E. "), ("{} talked", ""), ("{} talked", "B. "),
                    ("{} talked", "D. ")]
    many = phrasing_rows(tuple(f"{{}} said {n}" for n in range(7)), contexts, settings)
    assert sorted(context for _, context in many) == [""] * 7 + contexts[1:]
    assert phrasing_rows((), contexts, settings) == []
    every = replace(settings, deal_phrasing_contexts=False)
    assert len(phrasing_rows(("{} spoke", "{} talked"), contexts, every)) == 12
    bare = replace(every, phrasing_contexts=False)
    assert phrasing_rows(("{} spoke",), contexts, bare) == [("{} spoke", "")]


def test_dealing_prefixes_without_phrasing_contexts_is_refused():
    with pytest.raises(ValueError, match="deal_phrasing_contexts applies to phrasing_contexts"):
        TargetSettings(train_phrasings=True, deal_phrasing_contexts=True)


def test_phrasing_contexts_without_training_phrasings_is_refused(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    with pytest.raises(ValueError, match="phrasing_contexts applies to train_phrasings"):
        replace(engine.settings.target, phrasing_contexts=True)


def test_phrasings_are_left_out_unless_asked_for(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    settings = replace(engine.settings.target, steps=5)
    layer = engine.layers[-1]
    plain = optimise_targets(engine.loaded, [QUICK], layer, engine.contexts, settings,
                             use_neighbours=False)
    ignored = optimise_targets(engine.loaded, [replace(QUICK, phrasings=("{} spoke",))], layer,
                               engine.contexts, settings, use_neighbours=False)
    torch.testing.assert_close(ignored.z, plain.z)


def _energy_share(shift: torch.Tensor, dims: slice) -> float:
    return float((shift[:, dims] ** 2).sum() / (shift**2).sum())


def test_the_natural_rule_keeps_the_shift_out_of_directions_ordinary_text_feels(
        tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    layer = engine.layers[-1]
    size = engine.loaded.model.config.hidden_size
    felt = slice(0, size // 2)
    # Ordinary text feels the first half of the hidden state a hundred times more.
    sensitivity = torch.diag(torch.cat([torch.full((size // 2,), 100.0),
                                        torch.ones(size - size // 2)])).double()
    fixed = replace(engine.settings.target, steps=10, stop_nll=1e-6, learning_rate=0.05,
                    weight_decay=0.0, sensitivity_shrinkage=0.0)
    share = {}
    for rule in ("normalised", "natural"):
        result = optimise_targets(engine.loaded, [QUICK, SLOW], layer, engine.contexts,
                                  replace(fixed, step_rule=rule), use_neighbours=False,
                                  sensitivity=sensitivity)
        share[rule] = _energy_share(result.z - result.initial, felt)
    assert share["natural"] < share["normalised"] / 10


def test_the_natural_rule_reaches_the_stop_loss(tiny_loaded, tiny_engine):
    loaded = tiny_loaded("llama")
    usual = tiny_engine(loaded).settings.target
    engine = tiny_engine(loaded, target=replace(usual, step_rule="natural", learning_rate=0.1,
                                                steps=80, stop_nll=5.5))
    result = optimise_targets(engine.loaded, [QUICK], engine.layers[-1], engine.contexts,
                              engine.settings.target, use_neighbours=False,
                              sensitivity=engine.sensitivity)
    assert 0 < result.steps[0] < 80


def test_the_natural_rule_without_a_sensitivity_is_refused(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded("llama"))
    natural = replace(engine.settings.target, step_rule="natural")
    with pytest.raises(ValueError, match="needs the layer's sensitivity"):
        optimise_targets(engine.loaded, [QUICK], engine.layers[-1], engine.contexts, natural,
                         use_neighbours=False)
    with pytest.raises(ValueError, match="needs the last edit layer's sensitivity"):
        EditEngine(engine.loaded, replace(engine.settings, target=natural), engine.statistics,
                   engine.contexts)
