"""Values derived from key statistics are computed once and kept beside them."""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch

from factsync.editing.covariance import KeyStatistics
from factsync.editing.derived_cache import DerivedStore
from factsync.editing.engine import EditEngine, EngineSettings
from factsync.editing.spread import SpreadSettings
from factsync.editing.stats_cache import CovarianceCache, derived_path
from factsync.models.synthetic import LlamaShape, byte_tokenizer, random_llama

LOGGER = "factsync.editing.derived_cache"


def test_a_derived_value_is_made_once_and_read_by_a_later_store(tmp_path):
    made = []

    def make() -> torch.Tensor:
        made.append(1)
        return torch.arange(3.0)

    path = tmp_path / "layer3.derived.safetensors"
    assert torch.equal(DerivedStore(path).get_or_make("x", make), torch.arange(3.0))
    assert torch.equal(DerivedStore(path).get_or_make("x", make), torch.arange(3.0))
    assert len(made) == 1
    DerivedStore(path).get_or_make("y", lambda: torch.ones(2))  # both are kept
    assert torch.equal(DerivedStore(path).get_or_make("x", make), torch.arange(3.0))
    assert len(made) == 1


def test_a_damaged_derived_file_is_made_again_with_a_warning(tmp_path, caplog):
    path = tmp_path / "layer3.derived.safetensors"
    path.write_bytes(b"not safetensors")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert torch.equal(DerivedStore(path).get_or_make("x", lambda: torch.ones(1)),
                       torch.ones(1))
    assert "ignoring the damaged derived statistics" in caplog.text


def test_statistics_cached_again_drop_what_was_derived_from_the_old_ones(tmp_path,
                                                                         tiny_loaded):
    loaded = tiny_loaded("llama")
    cache = CovarianceCache(tmp_path)
    stats = KeyStatistics(second_moment=torch.eye(64, dtype=torch.float64), count=10,
                          sample=torch.randn(20, 64))
    path = cache.put(loaded, 1, "digest", 100, stats)
    stats.median_mahalanobis()
    assert derived_path(path).exists()
    cache.put(loaded, 1, "digest", 100, stats)
    assert not derived_path(path).exists()
    reread = cache.get(loaded, 1, "digest", 100)
    assert reread.shrunk(0.25).median_mahalanobis() == pytest.approx(
        KeyStatistics(second_moment=stats.second_moment, count=10,
                      sample=stats.sample).shrunk(0.25).median_mahalanobis())
    assert DerivedStore(derived_path(path))._read(list).keys() == {
        "median_mahalanobis/shrink=0.25"}


@pytest.mark.large
@pytest.mark.parametrize("algorithm", [
    "memit",
    # Its eigendecomposition of C takes over ten minutes on a 2-core CPU: run by hand.
    pytest.param("alphaedit", marks=pytest.mark.skipif(
        not os.environ.get("FACTSYNC_LARGE_ALPHAEDIT"),
        reason="set FACTSYNC_LARGE_ALPHAEDIT=1 (over ten minutes on CPU)")),
])
def test_an_engine_at_an_8b_key_size_derives_once_then_reads(tmp_path, caplog, algorithm):
    """Key size 14,336 (Llama-3-8B's MLP) on a thin random model: the first engine
    factors C (and, for AlphaEdit, decomposes it); the next one only reads."""
    shape = LlamaShape(hidden=32, intermediate=14336, layers=2, heads=4, kv_heads=2)
    loaded = random_llama(byte_tokenizer(["some text"], 300), shape)
    size = shape.intermediate
    generator = torch.Generator().manual_seed(0)
    factors = torch.randn(size, 64, dtype=torch.float64, generator=generator)
    moment = factors @ factors.T / 64
    moment.diagonal().add_(0.1)  # well conditioned: no ridge tries
    stats = KeyStatistics(second_moment=moment, count=100_000,
                          sample=torch.randn(200, size, generator=generator))
    cache = CovarianceCache(tmp_path)
    cache.put(loaded, 1, "digest", 100_000, stats)
    settings = EngineSettings(layers=(1,), spread=SpreadSettings(algorithm=algorithm))
    caplog.set_level(logging.INFO, logger=LOGGER)

    def construct() -> tuple[EditEngine, float]:
        started = time.monotonic()
        statistics = {1: cache.get(loaded, 1, "digest", 100_000)}
        engine = EditEngine(loaded, settings, statistics, [""])
        return engine, time.monotonic() - started

    first, cold = construct()
    derived = [r.getMessage() for r in caplog.records]
    assert len(derived) == (2 if algorithm == "alphaedit" else 1), derived
    caplog.clear()
    second, warm = construct()
    assert not caplog.records  # nothing derived again
    assert second.lambdas() == first.lambdas()
    if algorithm == "alphaedit":
        assert torch.equal(second.layer_contexts[1].projector, first.layer_contexts[1].projector)
    print(f"\n{algorithm} engine at key size {size}: {cold:.1f} s deriving, {warm:.1f} s reading")
