"""Key statistics: exact against an explicit computation, budgeted, sampled, cached."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from tokenizers.processors import TemplateProcessing

from factsync.editing.build import StatisticsSettings
from factsync.editing.cancellation import WorkCancelled
from factsync.editing.corpus import corpus_digest
from factsync.editing.covariance import KeyStatistics, ShrinkageTarget, compute_key_statistics
from factsync.editing.stats_cache import CovarianceCache, CovarianceCacheError
from factsync.models.hooks import capture_keys
from factsync.models.loading import LoadedModel, model_fingerprint, prompt_prefix_ids

# Texts of very different lengths, so batches carry padding; ~500 tokens in all, more
# than the tiny models' key sizes (64 or 128), so the second moments have full rank.
TEXTS = [
    "The capital of France is Paris.",
    "Hi",
    "Once upon a time, in 1998, scientists found a new city in the north of Italy.",
    *[
        f"Fact {i}: item {i * 7} is owned by company {i * 13 % 17} since {1900 + i}."
        for i in range(30)
    ],
    "Danielle Darrieux was a French actress; her mother tongue is French.",
]
LAYERS = [1, 2]


def explicit_keys(
    loaded: LoadedModel, layers: list[int], texts: list[str], max_length: int = 256
) -> dict[int, torch.Tensor]:
    """Keys of every text token, one window at a time and without padding: the reference.

    Each window is the prefix plus up to ``max_length - len(prefix)`` text tokens; the
    prefix's own keys are dropped.
    """
    lead = list(loaded.prefix_ids)
    room = max_length - len(lead)
    collected: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for text in texts:
        ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), room):
            window = torch.tensor([lead + ids[start : start + room]])
            with torch.no_grad(), capture_keys(loaded, layers) as captured:
                loaded.model(input_ids=window)
            for layer in layers:
                collected[layer].append(captured[layer][0, len(lead) :].double())
    return {layer: torch.cat(parts) for layer, parts in collected.items()}


def moment(keys: torch.Tensor) -> torch.Tensor:
    """Mean of k k^T over the rows of ``keys`` (n, key), in float64."""
    keys = keys.double()
    return keys.T @ keys / keys.shape[0]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def statistics(loaded: LoadedModel, **kwargs) -> dict[int, KeyStatistics]:
    """Statistics of ``TEXTS`` with test defaults: all tokens, batches of 4, no bar."""
    layers = kwargs.pop("layers", LAYERS)
    options = {"token_budget": 10**6, "batch_size": 4, "progress": False, **kwargs}
    return compute_key_statistics(loaded, layers, TEXTS, **options)


def test_second_moment_is_the_mean_over_text_tokens_without_prefix_or_padding(
    tiny_loaded, tiny_family
):
    loaded = tiny_loaded(tiny_family)
    assert loaded.prefix_ids, "the tiny tokenizer needs the prefix like the default model"
    stats = statistics(loaded)
    reference = explicit_keys(loaded, LAYERS, TEXTS)
    for layer in LAYERS:
        keys = reference[layer]
        assert stats[layer].count == keys.shape[0]
        assert stats[layer].second_moment.dtype == torch.float64
        assert relative_error(stats[layer].second_moment, moment(keys)) < 1e-5
    # The check can tell: counting the prefix's key would change C measurably.
    with torch.no_grad(), capture_keys(loaded, LAYERS) as captured:
        loaded.model(input_ids=torch.tensor([loaded.prefix_ids]))
    prefix_key = captured[LAYERS[0]][0].double()
    with_prefix = moment(torch.cat([prefix_key, reference[LAYERS[0]]]))
    assert relative_error(with_prefix, stats[LAYERS[0]].second_moment) > 1e-3


def test_long_texts_are_cut_into_windows_each_led_by_the_prefix(tiny_loaded):
    loaded = tiny_loaded("llama")
    stats = statistics(loaded, max_length=8)
    reference = explicit_keys(loaded, LAYERS, TEXTS, max_length=8)
    for layer in LAYERS:
        assert stats[layer].count == reference[layer].shape[0]
        assert relative_error(stats[layer].second_moment, moment(reference[layer])) < 1e-5


@pytest.mark.parametrize("budget, batch_size", [(37, 1), (37, 4), (200, 3)])
def test_budget_counts_exactly_the_first_tokens_in_text_order(tiny_loaded, budget, batch_size):
    loaded = tiny_loaded("llama")
    stats = statistics(loaded, token_budget=budget, batch_size=batch_size)
    reference = explicit_keys(loaded, LAYERS, TEXTS)
    for layer in LAYERS:
        assert stats[layer].count == budget
        expected = moment(reference[layer][:budget])
        assert relative_error(stats[layer].second_moment, expected) < 1e-5


def test_running_out_of_text_warns_and_reports_the_real_count(tiny_loaded, caplog):
    loaded = tiny_loaded("llama")
    total = explicit_keys(loaded, [1], TEXTS)[1].shape[0]
    with caplog.at_level(logging.WARNING, logger="factsync.editing.covariance"):
        stats = statistics(loaded, layers=[1], token_budget=total + 100)
    assert stats[1].count == total
    assert any(f"ran out after {total} of the {total + 100}" in r.message for r in caplog.records)


def test_sample_is_a_seeded_uniform_subset_of_the_same_tokens_in_every_layer(tiny_loaded):
    loaded = tiny_loaded("llama")
    reference = explicit_keys(loaded, LAYERS, TEXTS)
    stats = statistics(loaded, sample_size=25, seed=3)
    rows = {}
    for layer in LAYERS:
        sample = stats[layer].sample
        assert sample.shape == (25, stats[layer].key_size) and sample.dtype == torch.float32
        # Each sampled key is one of the counted keys; find which token it is.
        distances = torch.cdist(sample.double(), reference[layer])  # (25, tokens)
        nearest = distances.min(dim=1)
        assert float(nearest.values.max()) < 1e-5 * float(reference[layer].norm(dim=1).max())
        rows[layer] = sorted(nearest.indices.tolist())
    assert len(set(rows[LAYERS[0]])) == 25
    assert rows[LAYERS[0]] == rows[LAYERS[1]]
    again = statistics(loaded, sample_size=25, seed=3)
    other = statistics(loaded, sample_size=25, seed=4)
    assert torch.equal(again[1].sample, stats[1].sample)
    assert not torch.equal(other[1].sample, stats[1].sample)


def test_median_mahalanobis_matches_a_direct_computation(tiny_loaded, tiny_family):
    loaded = tiny_loaded(tiny_family)
    stats = statistics(loaded)[LAYERS[0]]
    # The sample holds every key (fewer tokens than SAMPLE_SIZE) and C has full rank.
    assert stats.sample.shape[0] == stats.count > stats.key_size
    inverse = torch.linalg.inv(stats.second_moment)
    keys = stats.sample.double()
    direct = torch.einsum("nk,kl,nl->n", keys, inverse, keys).numpy()
    assert stats.median_mahalanobis() == pytest.approx(float(np.median(direct)), rel=1e-6)
    # Trace identity: over the keys C was computed from, the mean is the key size.
    assert float(stats.mahalanobis().mean()) == pytest.approx(stats.key_size, rel=1e-4)


def test_mahalanobis_per_dimension_is_one_on_its_own_keys_and_higher_on_other_text(
        tiny_loaded, tiny_family):
    loaded = tiny_loaded(tiny_family)
    layer = LAYERS[0]
    stats = statistics(loaded, layers=[layer])[layer]
    own = stats.mahalanobis_per_dimension(stats.second_moment)
    assert own == pytest.approx(1.0, rel=1e-4)
    # The mean over the other text's keys, by the direct computation on every key.
    others = ["Zebras quietly eat 42 purple umbrellas!!", "x y z x y z ... ???"]
    other_keys = explicit_keys(loaded, [layer], others)[layer]
    direct = stats.mahalanobis(other_keys.float()).mean() / stats.key_size
    other = compute_key_statistics(loaded, [layer], others, token_budget=other_keys.shape[0],
                                   progress=False)[layer]
    assert stats.mahalanobis_per_dimension(other.second_moment) == pytest.approx(
        float(direct), rel=1e-4)
    with pytest.raises(ValueError, match="second_moment must be"):
        stats.mahalanobis_per_dimension(torch.eye(3))


def test_singular_second_moment_gets_a_ridge_and_stays_finite(tiny_loaded):
    loaded = tiny_loaded("llama")
    stats = statistics(loaded, token_budget=10)[1]
    assert torch.linalg.matrix_rank(stats.second_moment) <= 10 < stats.key_size
    values = stats.mahalanobis()
    assert torch.isfinite(values).all()
    # Keys lie in C's span, so the ridge leaves the trace identity at the rank (10).
    assert float(values.mean()) == pytest.approx(10, rel=1e-3)
    assert 0 < stats.median_mahalanobis() < 10


def test_computing_leaves_the_model_unchanged_and_hook_free(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    before = model_fingerprint(loaded.model)
    statistics(loaded, layers=[0, 3])
    assert model_fingerprint(loaded.model) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in loaded.model.modules())


@pytest.mark.parametrize(
    "kwargs, texts, match",
    [
        ({"layers": [4]}, TEXTS, r"layers \[4\] are outside the model's 0\.\.3"),
        ({"layers": []}, TEXTS, "no layers"),
        ({}, [], "corpus is empty"),
        ({"token_budget": 0}, TEXTS, "token_budget must be positive, got 0"),
        ({"max_length": 1}, TEXTS, "max_length 1 leaves no room"),
        ({}, ["", ""], "holds no tokens"),
    ],
)
def test_bad_arguments_are_named(tiny_loaded, kwargs, texts, match):
    loaded = tiny_loaded("llama")
    options = {"layers": [1], "token_budget": 100, "progress": False, **kwargs}
    layers = options.pop("layers")
    with pytest.raises(ValueError, match=match):
        compute_key_statistics(loaded, layers, texts, **options)


# --- the disk cache ---------------------------------------------------------------


def messages(caplog, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_cache_round_trip_is_exact_and_a_second_call_does_not_recompute(
    tiny_loaded, tmp_path, caplog
):
    loaded = tiny_loaded("llama")
    caplog.set_level(logging.INFO, logger="factsync.editing.stats_cache")
    first = CovarianceCache(tmp_path).get_or_compute(loaded, LAYERS, TEXTS, 300, progress=False)
    assert any("computing key statistics for layers [1, 2]" in m for m in messages(caplog))
    caplog.clear()
    # A new cache object over the same directory: what is reused comes from disk.
    second = CovarianceCache(tmp_path).get_or_compute(loaded, LAYERS, TEXTS, 300, progress=False)
    assert not any("computing" in m for m in messages(caplog))
    assert any("reusing cached key statistics for layers [1, 2]" in m for m in messages(caplog))
    for layer in LAYERS:
        assert torch.equal(first[layer].second_moment, second[layer].second_moment)
        assert torch.equal(first[layer].sample, second[layer].sample)
        assert first[layer].count == second[layer].count == 300
    names = sorted(p.name for p in (tmp_path / loaded.fingerprint).iterdir())
    digest = corpus_digest(TEXTS)
    assert names == [f"layer{layer}-{digest}-300-len256.safetensors" for layer in LAYERS] + [
        "statistics.lock"]


def test_cache_computes_only_the_missing_layers(tiny_loaded, tmp_path, caplog):
    loaded = tiny_loaded("llama")
    cache = CovarianceCache(tmp_path)
    cache.get_or_compute(loaded, [1], TEXTS, 200, progress=False)
    caplog.set_level(logging.INFO, logger="factsync.editing.stats_cache")
    both = cache.get_or_compute(loaded, [1, 2], TEXTS, 200, progress=False)
    assert sorted(both) == [1, 2]
    assert any("computing key statistics for layers [2]" in m for m in messages(caplog))
    assert any("reusing cached key statistics for layers [1]" in m for m in messages(caplog))


def test_cache_key_covers_model_corpus_budget_and_window(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    cache = CovarianceCache(tmp_path)
    cache.get_or_compute(loaded, [1], TEXTS, 200, progress=False)
    digest = corpus_digest(TEXTS)
    assert cache.get(loaded, 1, digest, 200) is not None
    retrained = tiny_loaded("llama", seed=1)
    assert retrained.fingerprint != loaded.fingerprint
    assert cache.get(retrained, 1, digest, 200) is None
    assert cache.get(loaded, 1, corpus_digest(TEXTS[1:]), 200) is None
    assert cache.get(loaded, 1, digest, 201) is None
    assert cache.get(loaded, 1, digest, 200, max_length=128) is None
    assert cache.get(loaded, 2, digest, 200) is None
    paths = {
        cache.path(loaded.fingerprint, 1, digest, 200),
        cache.path(retrained.fingerprint, 1, digest, 200),
        cache.path(loaded.fingerprint, 1, digest, 201),
        cache.path(loaded.fingerprint, 1, digest, 200, max_length=128),
    }
    assert len(paths) == 4


def test_truncated_cache_file_raises_on_get_and_is_recomputed_with_a_warning(
    tiny_loaded, tmp_path, caplog
):
    loaded = tiny_loaded("llama")
    cache = CovarianceCache(tmp_path)
    original = cache.get_or_compute(loaded, [1], TEXTS, 200, progress=False)[1]
    digest = corpus_digest(TEXTS)
    path = cache.path(loaded.fingerprint, 1, digest, 200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CovarianceCacheError, match=r"layer1-.*\.safetensors is unreadable"):
        cache.get(loaded, 1, digest, 200)
    caplog.set_level(logging.INFO, logger="factsync.editing.stats_cache")
    repaired = cache.get_or_compute(loaded, [1], TEXTS, 200, progress=False)[1]
    assert any(
        "unreadable" in m and "recomputing layer 1" in m for m in messages(caplog, logging.WARNING)
    )
    assert torch.equal(repaired.second_moment, original.second_moment)
    assert torch.equal(cache.get(loaded, 1, digest, 200).second_moment, original.second_moment)


def test_a_cache_file_under_the_wrong_name_is_refused(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    cache = CovarianceCache(tmp_path)
    cache.get_or_compute(loaded, [1], TEXTS, 200, progress=False)
    digest = corpus_digest(TEXTS)
    source = cache.path(loaded.fingerprint, 1, digest, 200)
    source.rename(cache.path(loaded.fingerprint, 1, digest, 300))
    with pytest.raises(CovarianceCacheError, match="records other token_budget than its name"):
        cache.get(loaded, 1, digest, 300)


def test_writes_leave_no_temporary_files(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    cache = CovarianceCache(tmp_path)
    stats = cache.get_or_compute(loaded, LAYERS, TEXTS, 100, progress=False)
    cache.put(loaded, 1, corpus_digest(TEXTS), 100, stats[1])  # overwrite in place
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".safetensors"]
    assert leftovers == ["statistics.lock"]  # the lock stays: removing it would be racy


def test_default_directory_is_under_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path))
    assert CovarianceCache().directory == tmp_path / "stats"


def test_key_statistics_check_their_shapes():
    with pytest.raises(ValueError, match=r"sample must be \(n, 4\)"):
        KeyStatistics(
            second_moment=torch.eye(4, dtype=torch.float64), count=3, sample=torch.zeros(2, 5)
        )
    with pytest.raises(ValueError, match="second_moment must be square"):
        KeyStatistics(second_moment=torch.zeros(4, 3), count=3, sample=torch.zeros(2, 3))


def test_start_tokens_added_by_the_tokenizer_are_excluded_like_a_prefix(tiny_loaded):
    loaded = tiny_loaded("llama")
    with_prefix = statistics(loaded, layers=[1])[1]
    bos = loaded.prefix_ids[0]
    loaded.tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    # Such a tokenizer needs no prefix; its own start token leads every window instead.
    own_start = replace(loaded, prefix_ids=prompt_prefix_ids(loaded.tokenizer, loaded.spec))
    assert own_start.prefix_ids == []
    stats = statistics(own_start, layers=[1])[1]
    assert stats.count == with_prefix.count
    assert relative_error(stats.second_moment, with_prefix.second_moment) < 1e-6


def test_without_any_start_token_every_token_counts(tiny_loaded):
    bare = replace(tiny_loaded("llama"), prefix_ids=[])
    stats = statistics(bare, layers=[1])[1]
    reference = explicit_keys(bare, [1], TEXTS)[1]
    assert stats.count == reference.shape[0]
    assert relative_error(stats.second_moment, moment(reference)) < 1e-5


def test_shrinking_blends_the_second_moment_toward_isotropy_and_keeps_its_trace(tiny_loaded):
    stats = statistics(tiny_loaded("llama"))[LAYERS[0]]
    shrunk = stats.shrunk(0.25)
    moment = stats.second_moment
    mean_eigenvalue = float(moment.trace()) / stats.key_size
    expected = 0.75 * moment + 0.25 * mean_eigenvalue * torch.eye(stats.key_size).double()
    torch.testing.assert_close(shrunk.second_moment, expected)
    assert float(shrunk.second_moment.trace()) == pytest.approx(float(moment.trace()))
    before, after = torch.linalg.eigvalsh(moment), torch.linalg.eigvalsh(shrunk.second_moment)
    assert after.min() > before.min() and after.max() < before.max()
    assert torch.equal(shrunk.sample, stats.sample) and shrunk.count == stats.count
    torch.testing.assert_close(stats.shrunk(0.0).second_moment, moment)
    with pytest.raises(ValueError, match=r"shrinkage weight must be in \[0, 1\), got 1"):
        stats.shrunk(1)


def test_shrinking_toward_the_diagonal_keeps_each_units_variance_and_shrinks_correlations(
        tiny_loaded):
    stats = statistics(tiny_loaded("llama"))[LAYERS[0]]
    moment = stats.second_moment
    shrunk = stats.shrunk(0.25, ShrinkageTarget.DIAGONAL).second_moment
    torch.testing.assert_close(shrunk.diagonal(), moment.diagonal())
    off = ~torch.eye(stats.key_size, dtype=torch.bool)
    torch.testing.assert_close(shrunk[off], 0.75 * moment[off])
    # A unit with little variance stays cheap to move; toward isotropy it would not.
    weakest = int(moment.diagonal().argmin())
    isotropic = stats.shrunk(0.25).second_moment
    assert isotropic[weakest, weakest] > shrunk[weakest, weakest]
    # The two targets name what is derived from them apart.
    assert stats.shrunk(0.25, ShrinkageTarget.DIAGONAL).variant != stats.shrunk(0.25).variant


def test_computing_stops_between_batches_when_asked_and_leaves_no_hooks(tiny_loaded):
    loaded = tiny_loaded("llama")
    asked = []

    def cancelled() -> bool:
        asked.append(True)
        return len(asked) > 2

    with pytest.raises(WorkCancelled, match="computing key statistics was stopped"):
        statistics(loaded, cancelled=cancelled)
    assert len(asked) == 3  # two batches ran, the third was refused
    assert all(not m._forward_hooks and not m._forward_pre_hooks
               for m in loaded.model.modules())


@pytest.mark.parametrize(("configured", "key_size", "expected"), [
    (None, 64, 300_000), (None, 1536, 300_000), (None, 40_000, 400_000), (5000, 14_336, 5000),
])
def test_the_corpus_budget_scales_with_the_key_size_unless_set(configured, key_size, expected):
    assert StatisticsSettings(corpus_tokens=configured).tokens_for(key_size) == expected
