"""The engine on tiny random models: batching, IME bookkeeping, model left unchanged."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from factsync.editing import spread as spread_module
from factsync.editing.cancellation import EditCancelled
from factsync.editing.covariance import ShrinkageTarget
from factsync.editing.delta import ModelDelta, applied
from factsync.editing.engine import EditEngine, EngineSettings, StopReason
from factsync.editing.engine_state import EngineState, StateFile
from factsync.editing.keys import lead_keys, subject_outputs, subject_states_by_layer
from factsync.editing.outcomes import TookRule, edit_outcomes
from factsync.editing.requests import EditRequest, Neighbour
from factsync.editing.spread import lead_is_cheap, spread
from factsync.editing.targets import TargetSettings, optimise_targets
from factsync.models.scoring import batch_scores, score_targets
from factsync.models.text import PromptSpec, encode, object_ids

REQUESTS = [
    EditRequest(
        "Danielle Darrieux",
        "The mother tongue of {} is",
        "Italy",
        "French",
        (Neighbour("Skype", "The mother tongue of {} is", "French"),),
    ),
    EditRequest("LinkedIn", "{} is owned by", "Apple", "Microsoft"),
    EditRequest("Paris", "The capital of {} is", "Rome", "France"),
]


def held_product(states: list[EngineState]) -> dict[int, torch.Tensor]:
    """Per layer, ``K K^T`` in float64 over every state's keys: what an engine holding
    exactly ``states`` should hold."""
    layers = {layer for state in states for layer in state.keys}
    return {layer: sum(state.keys[layer].double() @ state.keys[layer].double().T
                       for state in states if layer in state.keys)
            for layer in layers}

def _state(loaded) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def test_batched_targets_equal_one_at_a_time(tiny_engine, tiny_loaded, tiny_family):
    loaded = tiny_loaded(tiny_family)
    engine = tiny_engine(loaded)
    layer = loaded.default_layers[-1]
    target = engine.settings.target
    batched = optimise_targets(loaded, REQUESTS, layer, engine.contexts, target,
                               use_neighbours=True)
    single = optimise_targets(
        loaded,
        REQUESTS,
        layer,
        engine.contexts,
        replace(target, chunk_size=1, replay_frozen=False),
        use_neighbours=True,
    )
    assert batched.steps == single.steps
    assert torch.allclose(batched.z, single.z, atol=1e-4)
    assert batched.probability == pytest.approx(single.probability, abs=1e-5)


def test_early_stopping_is_per_fact(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    engine = tiny_engine(loaded)
    layer = loaded.default_layers[-1]
    # every fact is done before its first step
    loose = replace(engine.settings.target, stop_nll=50.0)
    result = optimise_targets(loaded, REQUESTS, layer, engine.contexts, loose,
                              use_neighbours=False)
    assert result.steps == [0, 0, 0]
    assert torch.equal(result.z, result.initial)
    strict = replace(engine.settings.target, stop_nll=1e-9)
    result = optimise_targets(loaded, REQUESTS, layer, engine.contexts, strict,
                              use_neighbours=False)
    assert result.steps == [engine.settings.target.steps] * 3


def test_clamp_bounds_the_target_shift(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    engine = tiny_engine(loaded)
    layer = loaded.default_layers[-1]
    tight = replace(engine.settings.target, clamp_norm_factor=0.05, stop_nll=1e-9)
    result = optimise_targets(loaded, REQUESTS, layer, engine.contexts, tight,
                              use_neighbours=False)
    shift = (result.z - result.initial).norm(dim=1)
    assert torch.all(shift <= 0.05 * result.initial.norm(dim=1) + 1e-5)


def _with_spread(engine: EditEngine, **changes) -> EditEngine:
    settings = replace(engine.settings, spread=replace(engine.settings.spread, **changes))
    return EditEngine(engine.loaded, settings, engine.statistics, engine.contexts)


@pytest.mark.parametrize("algorithm", ["memit", "alphaedit"])
def test_spread_carries_the_targets_into_the_weights(
    tiny_engine, tiny_loaded, tiny_family, algorithm
):
    loaded = tiny_loaded(tiny_family)
    engine = _with_spread(tiny_engine(loaded), algorithm=algorithm, update_fraction=0.9)
    prompts = [(r.template, r.subject) for r in REQUESTS]
    last = engine.layers[-1]
    current = subject_outputs(loaded, prompts, last)
    generator = torch.Generator().manual_seed(0)
    targets = current + 0.5 * current.norm(dim=1, keepdim=True) * torch.nn.functional.normalize(
        torch.randn(current.shape, generator=generator), dim=1
    )
    delta, _, owners = spread(
        loaded,
        prompts,
        targets,
        engine.layers,
        engine.contexts,
        engine.layer_contexts,
        engine.settings.spread,
    )
    with applied(loaded, delta):
        moved = subject_outputs(loaded, prompts, last)
    remaining = (targets - moved).norm(dim=1) / (targets - current).norm(dim=1)
    assert torch.all(remaining < 0.5), remaining
    assert sorted(set(owners.tolist())) == [0, 1, 2]  # every fact owns a key group


@pytest.mark.parametrize("algorithm", ["memit", "alphaedit"])
def test_the_spread_reads_the_layers_below_its_own_once_with_the_same_result(
    tiny_engine, tiny_loaded, algorithm, monkeypatch
):
    loaded = tiny_loaded()
    engine = _with_spread(tiny_engine(loaded, layers=(2, 3)), algorithm=algorithm)
    prompts = [(r.template, r.subject) for r in REQUESTS]
    targets = 1.2 * subject_outputs(loaded, prompts, engine.layers[-1])
    protected = [(n.template, n.subject) for r in REQUESTS for n in r.neighbours]
    assert protected

    def run() -> tuple:
        return spread(loaded, prompts, targets, engine.layers, engine.contexts,
                      engine.layer_contexts, engine.settings.spread, protected=protected)

    replayed = run()
    monkeypatch.setattr(spread_module, "frozen_states", lambda *args, **kwargs: None)
    run_through = run()
    for path, update in replayed[0].layers.items():
        assert torch.equal(update.up, run_through[0].layers[path].up)
        assert torch.equal(update.down, run_through[0].layers[path].down)
    for layer, keys in replayed[1].items():
        assert torch.equal(keys, run_through[1][layer])


@pytest.mark.parametrize("algorithm", ["memit", "alphaedit"])
def test_edit_leaves_the_model_as_found_and_records_every_pass(
    tiny_engine, tiny_loaded, tiny_family, algorithm
):
    loaded = tiny_loaded(tiny_family)
    engine = _with_spread(tiny_engine(loaded, max_iterations=3, neighbours=True),
                          algorithm=algorithm)
    before = _state(loaded)
    result = engine.edit(REQUESTS)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), f"edit changed {name}"
    assert result.delta.is_finite()
    assert set(result.delta.layers) == {loaded.spec.mlp_out_path(x) for x in engine.layers}
    assert result.delta.metadata["model_fingerprint"] == loaded.fingerprint
    for records in result.records:
        assert 1 <= len(records) <= 3
        assert [r.iteration for r in records] == list(range(1, len(records) + 1))
        assert records[-1].took or len(records) == 3
        assert not any(r.took for r in records[:-1])
    # One pass adds at most one key per fact and subject tokenisation per layer.
    max_rank = result.iterations * len(REQUESTS) * len(engine.contexts)
    assert all(u.rank <= max_rank for u in result.delta.layers.values())


def test_single_pass_runs_once_and_records_both_stages(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    result = tiny_engine(loaded, max_iterations=1).edit(REQUESTS)
    assert result.iterations == 1
    for records in result.records:
        (record,) = records
        assert 0 <= record.spread_probability <= 1
        assert 0 <= record.optimisation_probability <= 1


@pytest.mark.parametrize("rule", list(TookRule))
def test_facts_leave_ime_when_their_edit_took_and_only_then(tiny_engine, tiny_loaded, rule):
    loaded = tiny_loaded()
    result = tiny_engine(loaded, max_iterations=3, took_rule=rule).edit(REQUESTS)
    with applied(loaded, result.delta):
        took = edit_outcomes(loaded, REQUESTS, tiny_engine(loaded).contexts, rule).took
    for records, reason, now in zip(result.records, result.stop_reasons, took, strict=True):
        assert [r.took for r in records[:-1]] == [False] * (len(records) - 1)
        if records[-1].took:
            assert reason is StopReason.TOOK
            # Taken in the last pass, nothing came after: it holds in the returned delta.
            # (One taken earlier is pinned by later passes' least squares, not exactly.)
            assert now or len(records) < result.iterations
        else:
            assert reason is StopReason.PASSES_EXHAUSTED and len(records) == 3


def test_an_edit_that_did_not_take_is_optimised_again(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    # Too few steps and a tiny update fraction: no edit can take in one pass.
    engine = _with_spread(tiny_engine(loaded, max_iterations=2), update_fraction=0.01)
    result = engine.edit(REQUESTS[1:2])
    (records,) = result.records
    assert [r.iteration for r in records] == [1, 2]
    assert not records[0].took
    assert result.stop_reasons[0] is (StopReason.TOOK if records[1].took
                                      else StopReason.PASSES_EXHAUSTED)


def test_alphaedit_remembers_applied_keys(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    engine = _with_spread(tiny_engine(loaded), algorithm="alphaedit")
    result = engine.edit(REQUESTS[:1])
    layer = engine.layers[0]
    assert torch.count_nonzero(engine.layer_contexts[layer].preserved) == 0
    engine.remember(result)
    keys = result.keys[layer].double()
    assert torch.allclose(engine.layer_contexts[layer].preserved, keys @ keys.T)


def test_restore_preserves_exactly_the_keys_of_the_states_given(tiny_engine, tiny_loaded):
    engine = _with_spread(tiny_engine(tiny_loaded()), algorithm="alphaedit")
    first, second = engine.edit(REQUESTS[:1]), engine.edit(REQUESTS[1:2])
    engine.remember(first)
    engine.remember(second)
    both = engine.preserved()
    engine.restore([first.state])  # as after a rollback to the first edit's version
    only_first = engine.preserved()
    for layer in engine.layers:
        keys = first.keys[layer].double()
        assert torch.allclose(only_first[layer], keys @ keys.T)
        assert not torch.allclose(both[layer], only_first[layer])
    engine.restore([first.state, second.state])
    assert all(torch.allclose(engine.preserved()[x], both[x]) for x in engine.layers)
    engine.restore([])
    assert all(torch.count_nonzero(m) == 0 for m in engine.preserved().values())


@pytest.mark.parametrize("algorithm", ["memit", "alphaedit"])
def test_a_subject_edited_again_releases_its_earlier_keys(tiny_engine, tiny_loaded, algorithm):
    engine = _with_spread(tiny_engine(tiny_loaded()), algorithm=algorithm)
    first = engine.edit(REQUESTS[:2])
    others = first.state.select([c for c, s in enumerate(first.subjects) if s != "LinkedIn"])
    assert others.subjects and "LinkedIn" not in others.subjects
    again = replace(REQUESTS[1], new_object="Google", old_object="Apple")
    engine.remember(first)
    released = engine.edit([again])
    engine.restore([others])  # as if LinkedIn had never been edited
    fresh = engine.edit([again])
    for path, layer_delta in fresh.delta.layers.items():
        layout = engine.loaded.spec.weight_layout
        assert torch.allclose(released.delta.layers[path].matrix(layout),
                              layer_delta.matrix(layout), atol=1e-5)
    engine.restore([first.state])
    engine.remember(released)  # LinkedIn's new keys supersede its old ones
    expected = held_product([others, released.state])
    assert all(torch.allclose(engine.preserved()[x], expected[x]) for x in engine.layers)
    engine.restore([first.state, released.state])
    assert all(torch.allclose(engine.preserved()[x], expected[x]) for x in engine.layers)


def test_keys_left_in_state_files_are_read_back_as_if_they_were_kept(
    tiny_engine, tiny_loaded, tmp_path
):
    kept = _with_spread(tiny_engine(tiny_loaded()), algorithm="memit")
    filed = EditEngine(kept.loaded, kept.settings, kept.statistics, kept.contexts)
    first = kept.edit(REQUESTS[:2])
    first.state.save(tmp_path / "first.safetensors")
    kept.remember(first)
    filed.remember(first, StateFile(tmp_path / "first.safetensors"))
    again = replace(REQUESTS[1], new_object="Google", old_object="Apple")
    from_memory, from_file = kept.edit([again]), filed.edit([again])
    layout = kept.loaded.spec.weight_layout
    for path, layer_delta in from_file.delta.layers.items():  # LinkedIn's old keys released
        assert torch.allclose(from_memory.delta.layers[path].matrix(layout),
                              layer_delta.matrix(layout), atol=1e-6)
    from_file.state.save(tmp_path / "again.safetensors")
    kept.remember(from_memory)
    filed.remember(from_file, StateFile(tmp_path / "again.safetensors"))
    assert all(torch.allclose(filed.preserved()[x], kept.preserved()[x]) for x in kept.layers)
    filed.restore([StateFile(tmp_path / "first.safetensors"),
                   StateFile(tmp_path / "again.safetensors")])
    assert all(torch.allclose(filed.preserved()[x], kept.preserved()[x]) for x in kept.layers)


@pytest.mark.parametrize("algorithm", ["memit", "alphaedit"])
def test_without_release_a_subject_edited_again_keeps_its_earlier_keys_held(
    tiny_engine, tiny_loaded, algorithm
):
    releasing = _with_spread(tiny_engine(tiny_loaded()), algorithm=algorithm)
    holding = EditEngine(releasing.loaded, replace(releasing.settings, release_superseded=False),
                         releasing.statistics, releasing.contexts)
    first = holding.edit(REQUESTS[:2])
    again = replace(REQUESTS[1], new_object="Google", old_object="Apple")
    releasing.remember(first)
    holding.remember(first)
    held, released = holding.edit([again]), releasing.edit([again])
    layout = holding.loaded.spec.weight_layout
    assert not all(torch.allclose(held.delta.layers[path].matrix(layout), delta.matrix(layout),
                                  atol=1e-5) for path, delta in released.delta.layers.items())
    holding.remember(held)
    expected = held_product([first.state, held.state])  # the old keys stay beside the new
    assert all(torch.allclose(holding.preserved()[x], expected[x]) for x in holding.layers)
    holding.restore([first.state, held.state])
    assert all(torch.allclose(holding.preserved()[x], expected[x]) for x in holding.layers)


def test_a_neighbour_about_an_edited_subject_is_held_by_the_optimisation_only(
    tiny_engine, tiny_loaded
):
    loaded = tiny_loaded()
    engine = tiny_engine(loaded, max_iterations=1, neighbours=True)
    sibling = Neighbour("LinkedIn", "{} was founded by", "Reid")
    request = replace(REQUESTS[1], neighbours=(sibling,))
    result = engine.edit([request])
    z = optimise_targets(loaded, [request], engine.layers[-1], engine.contexts,
                         engine.settings.target, use_neighbours=True).z
    spread_with = lambda protected: spread(  # noqa: E731
        loaded, [(request.template, request.subject)], z, engine.layers, engine.contexts,
        engine.layer_contexts, engine.settings.spread, protected=protected)[0]
    layout = loaded.spec.weight_layout
    unheld, held = spread_with([]), spread_with([(sibling.template, sibling.subject)])
    for path, layer_delta in result.delta.layers.items():
        assert torch.allclose(layer_delta.matrix(layout), unheld.layers[path].matrix(layout),
                              atol=1e-5)
        assert not torch.allclose(layer_delta.matrix(layout), held.layers[path].matrix(layout),
                                  atol=1e-5)


def test_kept_neighbours_stay_held_until_their_subject_is_written(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    engine = tiny_engine(loaded, neighbours=True, keep_neighbours_held=True)
    skype = REQUESTS[0].neighbours[0]
    first = engine.edit(REQUESTS[:1])
    assert first.subjects[-1] == "Skype" and first.subjects.count("Skype") == 1
    with applied(loaded, first.delta):  # the key as later jobs will find it
        read = subject_states_by_layer(loaded, [(skype.template, "Skype")], engine.layers,
                                       engine.layers[-1], [""])
    for layer in engine.layers:
        assert torch.allclose(first.keys[layer][:, -1:], read[layer].keys, atol=1e-6)
    engine.remember(first)
    expected = held_product([first.state])
    assert all(torch.allclose(engine.preserved()[x], expected[x]) for x in engine.layers)
    again = engine.edit([replace(REQUESTS[1], neighbours=(skype,))])
    assert "Skype" not in again.subjects  # it already stands: not held twice
    written = engine.edit([EditRequest("Skype", skype.template, "German", "French")])
    engine.remember(written)  # the edit of Skype itself lets go of the neighbour's key
    others = first.state.select([c for c, s in enumerate(first.subjects) if s != "Skype"])
    expected = held_product([others, written.state])
    assert all(torch.allclose(engine.preserved()[x], expected[x]) for x in engine.layers)


def test_a_kept_neighbour_moves_less_under_later_jobs(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    plain = tiny_engine(loaded, neighbours=True)
    keeping = EditEngine(loaded, replace(plain.settings, keep_neighbours_held=True),
                         plain.statistics, plain.contexts)
    first = {engine: engine.edit(REQUESTS[:1]) for engine in (plain, keeping)}
    skype = [(REQUESTS[0].neighbours[0].template, "Skype")]
    later = [EditRequest("Lyon", "The mother tongue of {} is", "Dutch", "French")]
    last = plain.layers[-1]
    moved = {}
    layout = loaded.spec.weight_layout
    assert all(torch.allclose(first[keeping].delta.layers[path].matrix(layout),
                              layer_delta.matrix(layout))  # only the states differ
               for path, layer_delta in first[plain].delta.layers.items())
    with applied(loaded, first[plain].delta):
        for engine in (plain, keeping):
            engine.remember(first[engine])
            before = subject_outputs(loaded, skype, last)
            with applied(loaded, engine.edit(later).delta):
                moved[engine] = (subject_outputs(loaded, skype, last) - before).norm()
    assert moved[keeping] < 0.75 * moved[plain]


GUARDS = [("{} is located in", "Lyon"), ("The capital of {} is", "Italy"),
          ("{} is owned by", "LinkedIn")]


def _guard_state(loaded, engine) -> EngineState:  # noqa: ANN001
    read = subject_states_by_layer(loaded, GUARDS, engine.layers, engine.layers[-1], [""])
    return EngineState(keys={layer: r.keys for layer, r in read.items()},
                       subjects=tuple(subject for _, subject in GUARDS))


def _guarded(engine: EditEngine) -> EditEngine:
    return EditEngine(engine.loaded, engine.settings, engine.statistics, engine.contexts,
                      guards=GUARDS)


def test_guards_are_held_from_the_start_and_after_every_restore(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    engine = _guarded(tiny_engine(loaded))
    guard = _guard_state(loaded, engine)
    expected = held_product([guard])
    assert all(torch.allclose(engine.preserved()[x], expected[x]) for x in engine.layers)
    first = engine.edit(REQUESTS[:1])
    engine.remember(first)
    engine.restore([first.state])
    expected = held_product([guard, first.state])
    assert all(torch.allclose(engine.preserved()[x], expected[x]) for x in engine.layers)


def test_writing_a_guard_subject_lets_go_of_its_guard(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    engine = _guarded(tiny_engine(loaded))
    guard = _guard_state(loaded, engine)
    written = engine.edit([REQUESTS[1]])  # LinkedIn, a guard's subject
    engine.remember(written)
    others = guard.select([c for c, s in enumerate(guard.subjects) if s != "LinkedIn"])
    expected = held_product([others, written.state])
    assert all(torch.allclose(engine.preserved()[x], expected[x]) for x in engine.layers)
    engine.restore([written.state])
    assert all(torch.allclose(engine.preserved()[x], expected[x]) for x in engine.layers)


def test_a_guard_moves_less_under_an_edit(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    plain = tiny_engine(loaded)
    guarded = _guarded(plain)
    last = plain.layers[-1]
    before = subject_outputs(loaded, GUARDS[:2], last)
    moved = {}
    for engine in (plain, guarded):
        with applied(loaded, engine.edit(REQUESTS[:1]).delta):
            moved[engine] = (subject_outputs(loaded, GUARDS[:2], last) - before).norm()
    assert moved[guarded] < 0.75 * moved[plain]


def test_guards_need_a_spread_that_holds_keys(tiny_engine, tiny_loaded, caplog):
    engine = _with_spread(tiny_engine(tiny_loaded()), preserve_applied=False)
    guarded = _guarded(engine)
    assert guarded.preserved() == {}
    assert "3 guard facts are not held" in caplog.text


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_iterations must be at least 1"):
        EngineSettings(max_iterations=0)
    with pytest.raises(ValueError, match="layers must be distinct and increasing"):
        EngineSettings(layers=(3, 2))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        TargetSettings(steps=0)


def test_every_pass_is_timed_by_stage(tiny_engine, tiny_loaded):
    result = tiny_engine(tiny_loaded(), max_iterations=2).edit(REQUESTS)
    assert len(result.timings) == result.iterations
    for timing in result.timings:
        assert timing.optimisation_seconds > 0 and timing.spread_seconds > 0


@pytest.mark.parametrize(("preserve", "expected"), [(True, True), (False, False)])
def test_memit_remembers_applied_keys_unless_told_not_to(
    tiny_engine, tiny_loaded, preserve, expected
):
    engine = _with_spread(tiny_engine(tiny_loaded()), preserve_applied=preserve)
    engine.remember(engine.edit(REQUESTS[:1]))
    assert bool(engine.preserved()) is expected
    if expected:
        assert all(torch.count_nonzero(m) > 0 for m in engine.preserved().values())


@pytest.mark.parametrize("target", list(ShrinkageTarget))
def test_memit_solves_with_the_shrunk_second_moment_and_its_own_lambda(tiny_engine, tiny_loaded,
                                                                      target):
    engine = tiny_engine(tiny_loaded())
    shrunk = _with_spread(engine, second_moment_shrinkage=0.5,
                          second_moment_shrinkage_target=target.value)
    for layer in engine.layers:
        expected = engine.statistics[layer].shrunk(0.5, target)
        torch.testing.assert_close(shrunk.layer_contexts[layer].second_moment,
                                   expected.second_moment.float())
        fraction = engine.settings.spread.update_fraction
        assert shrunk.lambdas()[layer] == pytest.approx(
            expected.median_mahalanobis() * (1 - fraction) / fraction)
        assert shrunk.lambdas()[layer] != pytest.approx(engine.lambdas()[layer])
    with pytest.raises(ValueError, match="second_moment_shrinkage must be in"):
        replace(engine.settings.spread, second_moment_shrinkage=1.0)


def test_nme_neighbours_are_held_in_place_by_the_spread(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    engine = tiny_engine(loaded)
    prompts = [(r.template, r.subject) for r in REQUESTS]
    neighbours = [("{} is owned by", "Skype"), ("The capital of {} is", "Berlin")]
    last = engine.layers[-1]
    current = subject_outputs(loaded, prompts, last)
    targets = current + 0.5 * current.norm(dim=1, keepdim=True)
    moved = {}
    for protected in ([], neighbours):
        delta, _, _ = spread(loaded, prompts, targets, engine.layers, engine.contexts,
                          engine.layer_contexts, engine.settings.spread, protected=protected)
        before = subject_outputs(loaded, neighbours, last)
        with applied(loaded, delta):
            moved[bool(protected)] = (subject_outputs(loaded, neighbours, last) - before).norm()
    assert moved[True] < 0.5 * moved[False]


@pytest.mark.parametrize("algorithm", ["memit", "alphaedit"])
def test_the_leading_tokens_outputs_are_held_in_place_unless_told_not_to(
        tiny_engine, tiny_loaded, tiny_family, algorithm):
    loaded = tiny_loaded(tiny_family)
    engine = _with_spread(tiny_engine(loaded, layers=(1, 2)), algorithm=algorithm)
    prompts = [(r.template, r.subject) for r in REQUESTS]
    current = subject_outputs(loaded, prompts, engine.layers[-1])
    targets = current + 0.5 * current.norm(dim=1, keepdim=True)
    moved, carried = {}, {}
    for hold in (True, False):
        settings = replace(engine.settings.spread,
                           hold_lead="every_layer" if hold else "never")
        delta, _, _ = spread(loaded, prompts, targets, engine.layers, engine.contexts,
                             engine.layer_contexts, settings)
        before = lead_keys(loaded, engine.layers)
        for layer in engine.layers:
            change = delta.layers[loaded.spec.mlp_out_path(layer)]
            moved[hold, layer] = (change.up @ (change.down.T @ before[layer])).norm()
        with applied(loaded, delta):
            carried[hold] = (subject_outputs(loaded, prompts, engine.layers[-1])
                             - current).norm()
    for layer in engine.layers:
        assert moved[False, layer] > 0
        assert moved[True, layer] < 1e-3 * moved[False, layer]
    # Holding one more direction costs the facts little of the change they asked for.
    assert carried[True] > 0.5 * carried[False]


def test_where_cheap_holds_the_leading_tokens_only_at_the_layers_c_leaves_them_cheap(
        tiny_engine, tiny_loaded):
    loaded = tiny_loaded("llama")
    engine = _with_spread(tiny_engine(loaded, layers=(1, 2)), hold_lead="where_cheap")
    lead = lead_keys(loaded, engine.layers)
    for layer, context in engine.layer_contexts.items():
        shrinkage = engine.settings.spread.second_moment_shrinkage
        assert context.lead_cheap == lead_is_cheap(engine.statistics[layer].shrunk(shrinkage),
                                                   lead[layer])
    prompts = [(r.template, r.subject) for r in REQUESTS]
    current = subject_outputs(loaded, prompts, engine.layers[-1])
    targets = current + 0.5 * current.norm(dim=1, keepdim=True)
    moved = {}
    for cheap in (True, False):
        engine.layer_contexts[1].lead_cheap = cheap
        engine.layer_contexts[2].lead_cheap = not cheap
        delta, _, _ = spread(loaded, prompts, targets, engine.layers, engine.contexts,
                             engine.layer_contexts, engine.settings.spread)
        first = ModelDelta(layers={path: delta.layers[path]
                                   for path in [loaded.spec.mlp_out_path(1)]},
                           layout=delta.layout)
        with applied(loaded, first):  # layer 2's update sees layer 1's
            seen = {1: lead[1], 2: lead_keys(loaded, [2])[2]}
        for layer in engine.layers:
            change = delta.layers[loaded.spec.mlp_out_path(layer)]
            moved[cheap, layer] = (change.up @ (change.down.T @ seen[layer])).norm()
    assert moved[True, 1] < 1e-3 * moved[False, 1]
    assert moved[False, 2] < 1e-3 * moved[True, 2]


def test_most_probable_stop_ends_a_fact_once_its_object_is_the_greedy_answer(
    tiny_engine, tiny_loaded
):
    loaded, engine, layer, known = _greedy_answer_case(tiny_engine, tiny_loaded)
    requests = [known, REQUESTS[1]]
    mpes = replace(engine.settings.target, stop_nll=1e-9, most_probable_stop=True)
    result = optimise_targets(loaded, requests, layer, [""], mpes, use_neighbours=False)
    assert result.steps[0] == 0 and torch.equal(result.z[0], result.initial[0])
    assert result.steps[1] > 0  # not the greedy answer: optimised
    by_nll = replace(mpes, most_probable_stop=False)
    result = optimise_targets(loaded, requests, layer, [""], by_nll, use_neighbours=False)
    assert result.steps == [mpes.steps] * 2


def test_a_stop_margin_optimises_a_greedy_answer_until_it_leads_by_that_margin(
    tiny_engine, tiny_loaded
):
    loaded, engine, layer, known = _greedy_answer_case(tiny_engine, tiny_loaded)
    spec = PromptSpec(known.template, known.subject, object_ids(loaded, known.new_object))
    lead = batch_scores(loaded, encode(loaded, [spec])).margin.item()
    mpes = replace(engine.settings.target, steps=80, most_probable_stop=True)
    assert optimise_targets(loaded, [known], layer, [""], mpes, use_neighbours=False).steps == [0]
    wider = replace(mpes, stop_margin=lead + 1.0)
    result = optimise_targets(loaded, [known], layer, [""], wider, use_neighbours=False)
    assert 0 < result.steps[0] < 80  # it had to move, and it got there
    with pytest.raises(ValueError, match="stop_margin must not be negative"):
        replace(mpes, stop_margin=-1.0)
    with pytest.raises(ValueError, match="stop_margin applies to most_probable_stop"):
        replace(mpes, most_probable_stop=False, stop_margin=1.0)


def _greedy_answer_case(tiny_engine, tiny_loaded):  # noqa: ANN001, ANN202
    """A tiny model, its engine, its last edit layer and a request the model already
    answers greedily."""
    loaded = tiny_loaded()
    engine = tiny_engine(loaded)
    layer = loaded.default_layers[-1]
    return loaded, engine, layer, _request_for_greedy_answer(loaded, REQUESTS[2])


def _request_for_greedy_answer(loaded, request: EditRequest) -> EditRequest:
    """``request`` on a subject whose greedy next token, after a space, is a whole object."""
    for subject in ("Paris", "Rome", "Lyon", "Tokyo", "Oslo", "Cairo", "Lima", "Quito", "Bern"):
        spec = PromptSpec(request.template, subject, (0,))
        (score,) = score_targets(loaded, [spec])
        greedy = loaded.tokenizer.decode(list(score.predicted))
        if object_ids(loaded, greedy) == score.predicted:
            return replace(request, subject=subject, new_object=greedy)
    raise AssertionError("no subject's greedy answer encodes back to itself")


def test_a_cancelled_edit_stops_and_leaves_the_weights_alone(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    engine = tiny_engine(loaded)
    before = _state(loaded)
    asked = []

    def cancelled() -> bool:
        asked.append(True)
        return len(asked) > 2

    with pytest.raises(EditCancelled):
        engine.edit(REQUESTS, cancelled=cancelled)
    assert len(asked) == 3
    after = _state(loaded)
    assert all(torch.equal(before[name], after[name]) for name in before)
