"""Assembling an ``EditEngine`` for a model: corpus, key statistics, context prefixes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from factsync.editing.cancellation import Cancelled, never
from factsync.editing.contexts import sample_contexts
from factsync.editing.corpus import load_text_files, model_corpus
from factsync.editing.covariance import KeyStatistics
from factsync.editing.engine import EditEngine, EngineSettings
from factsync.editing.stats_cache import CovarianceCache
from factsync.models.loading import LoadedModel
from factsync.paths import data_home

DEFAULT_CORPUS_TOKENS = 20_000
"""Tokens of model-sampled text behind the key statistics; see README "Covariance"."""


@dataclass(frozen=True)
class StatisticsSettings:
    """Where key statistics come from.

    Attributes:
        corpus_tokens: tokens of text the statistics are computed over.
        corpus_seed: seed of the model-sampled corpus.
        text_files: user text files to use instead of model-sampled text.
    """

    corpus_tokens: int = DEFAULT_CORPUS_TOKENS
    corpus_seed: int = 0
    text_files: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.corpus_tokens < 1000:
            raise ValueError(f"corpus_tokens must be at least 1000, got {self.corpus_tokens}")


def layer_statistics(
    loaded: LoadedModel,
    layers: list[int],
    settings: StatisticsSettings,
    *,
    home: Path | None = None,
    cancelled: Cancelled = never,
) -> dict[int, KeyStatistics]:
    """Key statistics of ``layers``, from the disk cache or computed and cached; a
    stop asked by ``cancelled`` raises ``WorkCancelled`` and keeps what was sampled."""
    home = home or data_home()
    if settings.text_files:
        texts = load_text_files(list(settings.text_files))
    else:
        texts = model_corpus(
            loaded,
            num_tokens=settings.corpus_tokens,
            seed=settings.corpus_seed,
            cache_dir=home / "corpus",
            cancelled=cancelled,
        )
    cache = CovarianceCache(home / "stats")
    return cache.get_or_compute(loaded, layers, texts, token_budget=settings.corpus_tokens,
                                cancelled=cancelled)


def build_engine(
    loaded: LoadedModel,
    settings: EngineSettings,
    statistics_settings: StatisticsSettings | None = None,
    *,
    home: Path | None = None,
    cancelled: Cancelled = never,
) -> EditEngine:
    """An engine for ``loaded`` with cached statistics and freshly sampled contexts;
    ``cancelled`` may stop building it (``WorkCancelled``)."""
    stats = layer_statistics(loaded, settings.edit_layers(loaded),
                             statistics_settings or StatisticsSettings(), home=home,
                             cancelled=cancelled)
    return EditEngine(loaded, settings, stats, sample_contexts(loaded))
