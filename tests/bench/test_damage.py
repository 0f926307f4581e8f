"""``bench damage`` splits a delta's harm by layer on a real (tiny) model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from factsync.bench.damage import (
    edited_layers,
    interaction_since,
    measure_damage,
    perplexity_against,
)
from factsync.cli import main
from factsync.editing.covariance import compute_key_statistics, token_count
from factsync.editing.delta import DeltaError, LayerDelta, ModelDelta, applied
from factsync.editing.keys import lead_keys
from factsync.evaluation.fluency import perplexity, summed_nlls, text_nlls
from factsync.evaluation.intervals import Interval

CORPUS = [
    "The capital of France is Paris and the capital of Italy is Rome.",
    "LinkedIn is owned by Microsoft, and so is Skype.",
    "Once upon a time, in 1998, scientists found a new city in the north.",
] * 8
FLUENCY = ["Dear customer, thank you for your order from Paris.",
           "Danielle Darrieux was a French actress whose mother tongue is French."]
BUDGET = 300


@pytest.fixture
def model_and_delta(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    delta = random_delta(loaded, [1, 2], rank=3, scale=0.5)
    # Layer 3's delta is zero: it must look harmless whatever the others do.
    path = loaded.spec.mlp_out_path(3)
    zero = delta.layers[loaded.spec.mlp_out_path(1)]
    delta.layers[path] = LayerDelta(up=torch.zeros_like(zero.up), down=zero.down.clone())
    statistics = compute_key_statistics(loaded, [1, 2, 3], CORPUS, token_budget=BUDGET,
                                        progress=False)
    return loaded, delta, statistics


def test_each_layer_is_measured_alone_and_left_out_and_the_model_is_left_as_it_was(
        model_and_delta):
    loaded, delta, statistics = model_and_delta
    before = {name: t.clone() for name, t in loaded.model.state_dict().items()}
    report = measure_damage(loaded, delta, statistics, CORPUS, FLUENCY, token_budget=BUDGET)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name

    assert [row.layer for row in report.layers] == [1, 2, 3]
    base = perplexity(loaded, FLUENCY)
    with applied(loaded, delta):
        assert report.perplexity_all == pytest.approx(perplexity(loaded, FLUENCY) / base)
    low, high = report.perplexity_all_interval
    assert low <= report.perplexity_all <= high and low < high
    first, second, zero = report.layers
    for row in (first, second):
        assert row.norm_growth > 0 and row.output_change > 0
        assert row.perplexity_alone != pytest.approx(1.0)
    assert zero.norm_growth == zero.output_change == zero.output_change_edited == 0
    assert zero.output_change_texts == 0
    assert first.output_change_texts > 0 and second.output_change_texts > 0
    assert zero.perplexity_alone == pytest.approx(1.0)
    assert zero.perplexity_without == pytest.approx(report.perplexity_all)
    only_first = ModelDelta(layers={loaded.spec.mlp_out_path(1): delta.layers[
        loaded.spec.mlp_out_path(1)]}, layout=delta.layout)
    with applied(loaded, only_first):
        assert first.perplexity_alone == pytest.approx(perplexity(loaded, FLUENCY) / base)
    assert report.perplexity_independent == pytest.approx(
        math.prod(row.perplexity_alone for row in report.layers))
    assert summed_nlls(report.unedited_tokens) == text_nlls(loaded, FLUENCY)
    with applied(loaded, delta):
        assert summed_nlls(report.edited_tokens) == text_nlls(loaded, FLUENCY)


def test_a_delta_against_another_is_the_ratio_of_their_perplexities(model_and_delta):
    loaded, delta, _ = model_and_delta
    with applied(loaded, delta):
        edited, edited_nlls = perplexity(loaded, FLUENCY), text_nlls(loaded, FLUENCY)
    assert perplexity_against(loaded, edited_nlls, delta, FLUENCY) == Interval(1.0, 1.0, 1.0)
    empty = ModelDelta(layers={}, layout=delta.layout)
    against = perplexity_against(loaded, edited_nlls, empty, FLUENCY)
    assert against.mean == pytest.approx(edited / perplexity(loaded, FLUENCY), rel=1e-5)
    assert against.low <= against.mean <= against.high
    reverse = perplexity_against(loaded, text_nlls(loaded, FLUENCY), delta, FLUENCY)
    assert reverse.mean == pytest.approx(1 / against.mean, rel=1e-5)


def test_a_stream_split_at_an_earlier_delta_says_whether_its_harms_compound(model_and_delta,
                                                                           random_delta):
    loaded, delta, _ = model_and_delta
    before = {name: t.clone() for name, t in loaded.model.state_dict().items()}
    base = text_nlls(loaded, FLUENCY)

    def split_at(whole: ModelDelta, earlier: ModelDelta):
        with applied(loaded, whole):
            measured = text_nlls(loaded, FLUENCY)
        return interaction_since(loaded, whole, earlier, FLUENCY, base=base, whole=measured)

    nothing_since = split_at(delta, delta)
    assert nothing_since.later.mean == pytest.approx(1.0, abs=1e-5)
    assert nothing_since.interaction.mean == pytest.approx(1.0, abs=1e-5)
    assert nothing_since.earlier == nothing_since.whole

    later = random_delta(loaded, [2], rank=2, scale=0.5, seed=7)
    split = split_at(delta.compose(later), delta)
    with applied(loaded, later):
        alone = perplexity(loaded, FLUENCY)
    assert split.later.mean == pytest.approx(alone / perplexity(loaded, FLUENCY), rel=1e-4)
    assert split.whole.mean == pytest.approx(
        split.earlier.mean * split.later.mean * split.interaction.mean, rel=1e-6)
    assert split.interaction.low <= split.interaction.mean <= split.interaction.high
    assert split.interaction.mean != pytest.approx(1.0, abs=1e-4)  # these two do interact
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_only_layers_above_an_edit_see_their_keys_move(model_and_delta):
    loaded, delta, statistics = model_and_delta
    report = measure_damage(loaded, delta, statistics, CORPUS, FLUENCY, token_budget=BUDGET)
    first, second, _ = report.layers
    # Nothing below layer 1 is edited; layer 1's edit moves the keys of layer 2.
    assert first.output_change_edited == pytest.approx(first.output_change, rel=1e-6)
    assert second.output_change_edited != pytest.approx(second.output_change, rel=1e-3)


def test_on_the_corpus_itself_the_text_keys_read_like_the_corpus_keys(model_and_delta):
    loaded, delta, _ = model_and_delta
    everything = token_count(loaded, CORPUS)
    statistics = compute_key_statistics(loaded, [1, 2, 3], CORPUS, token_budget=everything,
                                        progress=False)
    report = measure_damage(loaded, delta, statistics, CORPUS, CORPUS, token_budget=everything)
    # The corpus repeats three texts, so C is singular and its own keys read at its rank
    # over the key size, not 1.
    own = {layer: stats.mahalanobis_per_dimension(stats.second_moment)
           for layer, stats in statistics.items()}
    for row in report.layers:
        assert row.output_change_texts == pytest.approx(row.output_change, rel=1e-6, abs=1e-12)
        assert row.text_mahalanobis == pytest.approx(own[row.layer], rel=1e-6)
    # Over other text, the measures part: the corpus does not stand for it.
    other = measure_damage(loaded, delta, statistics, CORPUS, FLUENCY, token_budget=everything)
    for row in other.layers:
        assert row.text_mahalanobis > 2 * own[row.layer]


def test_the_start_token_reads_beside_the_sampled_keys_and_its_output_change_is_measured(
        model_and_delta):
    loaded, _, statistics = model_and_delta
    lead = lead_keys(loaded, [1, 2])
    assert all(keys.shape[1] == 1 for keys in lead.values())  # the tokenizer's start token
    generator = torch.Generator().manual_seed(1)

    def update(layer: int, down: torch.Tensor) -> LayerDelta:
        value_size = loaded.model.config.hidden_size
        return LayerDelta(up=torch.randn(value_size, 1, generator=generator),
                          down=down.reshape(-1, 1).float())

    # Layer 1 writes along the start token's key, layer 2 only across it.
    along = lead[1][:, 0]
    across = torch.randn(lead[2].shape[0], generator=generator)
    across -= (across @ lead[2][:, 0]) / lead[2][:, 0].square().sum() * lead[2][:, 0]
    delta = ModelDelta(layers={loaded.spec.mlp_out_path(1): update(1, along),
                               loaded.spec.mlp_out_path(2): update(2, across)},
                       layout=loaded.spec.weight_layout)
    first, second = measure_damage(loaded, delta, statistics, CORPUS, FLUENCY,
                                   token_budget=BUDGET).layers
    assert first.lead_output_change > 1e-3
    assert second.lead_output_change == pytest.approx(0.0, abs=1e-6)
    assert second.output_change > 1e-6
    for row in (first, second):
        keys, stats = lead[row.layer][:, 0].double(), statistics[row.layer]
        assert row.lead_key_norm == pytest.approx(
            float(keys.norm() / stats.sample.double().norm(dim=1).median()), rel=1e-6)
        # This C is singular: read k'C^-1k as KeyStatistics does, with its ridge.
        assert row.lead_mahalanobis == pytest.approx(
            float(stats.mahalanobis(keys.reshape(1, -1))[0]) / stats.median_mahalanobis(),
            rel=1e-6)


def test_a_delta_of_other_modules_is_refused_by_name(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    delta = random_delta(loaded, [1])
    delta.layers["model.layers.1.self_attn.o_proj"] = delta.layers.pop(
        loaded.spec.mlp_out_path(1))
    with pytest.raises(DeltaError, match="self_attn.o_proj, which are not MLP output"):
        edited_layers(loaded, delta)


def test_the_command_prints_the_table_and_writes_json(tiny_loaded, random_delta, tmp_path,
                                                      monkeypatch, capsys):
    loaded = tiny_loaded()
    model_dir = tmp_path / "model"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    delta_file = tmp_path / "delta.safetensors"
    random_delta(loaded, [1, 2], scale=0.5).save(delta_file)
    fluency = tmp_path / "fluency.json"
    fluency.write_text(json.dumps([{"Text": text} for text in FLUENCY]))
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path / "home"))
    other_file = tmp_path / "other.safetensors"
    random_delta(loaded, [2], scale=0.2).save(other_file)
    report = tmp_path / "damage.json"
    code = main(["bench", "damage", str(delta_file), "--fluency", str(fluency),
                 "--model", str(model_dir), "--device", "cpu", "--corpus-tokens", "1000",
                 "--against", str(other_file), "--since", str(other_file),
                 "--tokens", "4", "--json", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ppl ratio alone" in printed and "all layers: perplexity ratio" in printed
    assert "start token: layer | key norm / median" in printed
    data = json.loads(report.read_text())
    assert [row["layer"] for row in data["layers"]] == [1, 2]
    assert data["perplexity_all"] > 0 and data["perplexity_independent"] > 0
    low, high = data["perplexity_all_interval"]
    assert f"all layers: perplexity ratio {data['perplexity_all']:.4f} [{low:.4f}, {high:.4f}]" \
        in printed
    against = data["against"]
    assert against["delta"] == str(other_file)
    assert f"against {other_file}: perplexity ratio {against['perplexity_ratio'][0]:.3f}" \
        in printed
    since = data["since"]
    assert since["delta"] == str(other_file)
    assert set(since) == {"delta", "earlier", "later", "whole", "interaction"}
    assert f"the whole over the product of the parts {since['interaction'][0]:.3f}" in printed
    tokens = data["tokens"]
    assert len(tokens["largest"]) == 4 and set(tokens["share_carried"]) == {"5", "10", "20", "50"}
    assert f"{tokens['tokens']} scored tokens, net NLL change" in printed
