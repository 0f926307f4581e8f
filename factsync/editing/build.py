"""Assembling an ``EditEngine`` for a model: corpus, key statistics, context prefixes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from factsync.editing.cancellation import Cancelled, never
from factsync.editing.contexts import contexts_for
from factsync.editing.corpus import SAMPLING_TOP_K, load_text_files, mix_texts, model_corpus
from factsync.editing.covariance import KeyStatistics, layer_key_size
from factsync.editing.engine import EditEngine, EngineSettings
from factsync.editing.guards import engine_guards
from factsync.editing.joint_spread import joint_moment_for, stacked_key_size
from factsync.editing.progress import Progress, silent
from factsync.editing.sensitivity import sensitivity_for
from factsync.editing.stats_cache import CovarianceCache
from factsync.editing.targets import TargetOptimiser, optimise_targets
from factsync.models.loading import LoadedModel
from factsync.paths import data_home

MIN_CORPUS_TOKENS = 300_000
"""The default corpus for small key sizes; see README "Key statistics". Statistics over
20,000 tokens let a long stream of edits harm ordinary text measurably more."""
TOKENS_PER_KEY_DIMENSION = 10
"""Below about ten tokens per key dimension the second moment is near-singular: lambda
is distorted and AlphaEdit's null space is mostly directions the corpus never held."""


@dataclass(frozen=True)
class StatisticsSettings:
    """Where key statistics come from.

    Attributes:
        corpus_tokens: tokens of text the statistics are computed over; ``None`` scales
            them with the key size (``tokens_for``).
        corpus_seed: seed of the model-sampled corpus.
        text_files: user text files to use instead of model-sampled text, or beside it
            (``corpus_sampled_share``).
        corpus_sampled_share: with ``text_files``, the share of the corpus's tokens sampled
            from the model, interleaved with the files' text (``corpus.mix_texts``); 0
            (the default) uses the files alone. Half and half kept most of what either
            corpus alone gives on its own kind of text (bench/README.md).
        corpus_top_k: the model-sampled corpus draws each token from the model's
            ``corpus_top_k`` likeliest, or from all of them for 0
            (``corpus.FULL_DISTRIBUTION``, the default ``corpus.SAMPLING_TOP_K``).
    """

    corpus_tokens: int | None = None
    corpus_seed: int = 0
    text_files: tuple[Path, ...] = ()
    corpus_sampled_share: float = 0.0
    corpus_top_k: int = SAMPLING_TOP_K

    def __post_init__(self) -> None:
        if self.corpus_tokens is not None and self.corpus_tokens < 1000:
            raise ValueError(f"corpus_tokens must be at least 1000, got {self.corpus_tokens}")
        if self.corpus_top_k < 0:
            raise ValueError(f"corpus_top_k must not be negative, got {self.corpus_top_k}")
        if not 0 <= self.corpus_sampled_share < 1:
            raise ValueError("corpus_sampled_share must be at least 0 and below 1, got "
                             f"{self.corpus_sampled_share}")
        if self.corpus_sampled_share and not self.text_files:
            raise ValueError("corpus_sampled_share mixes model-sampled text with corpus "
                             "files; name the files too")

    def source(self) -> str:
        """The corpus in words, for logs and reports."""
        files = ", ".join(str(path) for path in self.text_files)
        if not files:
            return "model-sampled text"
        if not self.corpus_sampled_share:
            return files
        return f"{files} with {self.corpus_sampled_share:.0%} model-sampled text"

    def tokens_for(self, key_size: int) -> int:
        """The corpus budget for keys of ``key_size``: the configured one, else
        ``TOKENS_PER_KEY_DIMENSION`` per key dimension and at least ``MIN_CORPUS_TOKENS``
        (300,000 for SmolLM2's 1,536 and Llama-3-8B's 14,336 alike)."""
        return self.corpus_tokens or max(MIN_CORPUS_TOKENS, TOKENS_PER_KEY_DIMENSION * key_size)


@dataclass(frozen=True)
class StatisticsCorpus:
    """The text key statistics are computed over.

    Attributes:
        texts: the corpus: model-sampled text, the configured text files', or both.
        token_budget: how many of its tokens are counted.
    """

    texts: list[str]
    token_budget: int


def statistics_corpus(loaded: LoadedModel, layers: list[int], settings: StatisticsSettings, *,
                      home: Path | None = None, cancelled: Cancelled = never,
                      report: Progress = silent) -> StatisticsCorpus:
    """The corpus behind the key statistics of ``layers``: the cached model-sampled
    text (sampled now if missing), the configured text files, or both mixed."""
    home = home or data_home()
    tokens = settings.tokens_for(max(layer_key_size(loaded, layer) for layer in layers))
    files = load_text_files(list(settings.text_files))  # read first: a bad file fails fast
    if settings.text_files and not settings.corpus_sampled_share:
        return StatisticsCorpus(files, tokens)
    # The whole budget is sampled even when files take a share: that corpus is the one
    # shipped and cached for the default, and it fills in for files shorter than theirs.
    texts = model_corpus(
        loaded,
        num_tokens=tokens,
        seed=settings.corpus_seed,
        top_k=settings.corpus_top_k,
        cache_dir=home / "corpus",
        cancelled=cancelled,
        report=report,
    )
    if settings.text_files:
        texts = mix_texts(loaded, files, texts, sampled_share=settings.corpus_sampled_share,
                          token_budget=tokens)
    return StatisticsCorpus(texts, tokens)


def layer_statistics(
    loaded: LoadedModel,
    layers: list[int],
    settings: StatisticsSettings,
    *,
    home: Path | None = None,
    cancelled: Cancelled = never,
    report: Progress = silent,
    corpus: StatisticsCorpus | None = None,
) -> dict[int, KeyStatistics]:
    """Key statistics of ``layers``, from the disk cache or computed and cached; a
    stop asked by ``cancelled`` raises ``WorkCancelled`` and keeps what was sampled;
    ``report`` hears the stage and how far it got. ``corpus`` is ``statistics_corpus``'s
    answer when the caller already has it."""
    home = home or data_home()
    corpus = corpus or statistics_corpus(loaded, layers, settings, home=home,
                                         cancelled=cancelled, report=report)
    cache = CovarianceCache(home / "stats")
    return cache.get_or_compute(loaded, layers, corpus.texts, token_budget=corpus.token_budget,
                                cancelled=cancelled, report=report)


def methods_sensitivity(loaded: LoadedModel, methods: Iterable[EngineSettings],
                        layers: list[int], settings: StatisticsSettings, *,
                        home: Path | None = None,
                        corpus: StatisticsCorpus | None = None) -> torch.Tensor | None:
    """The sensitivity of the last of ``layers`` over the key statistics' corpus (cached
    beside them) when any of ``methods`` steps by the ``natural`` rule, else ``None``.
    ``corpus`` is ``statistics_corpus``'s answer when the caller already has it."""
    if not any(m.target.needs_sensitivity for m in methods):
        return None
    return layer_sensitivity(loaded, layers, settings, home=home, corpus=corpus)


def layer_sensitivity(loaded: LoadedModel, layers: list[int], settings: StatisticsSettings, *,
                      home: Path | None = None,
                      corpus: StatisticsCorpus | None = None) -> torch.Tensor:
    """The sensitivity of the last of ``layers`` over the key statistics' corpus, cached
    beside them; ``corpus`` as for ``methods_sensitivity``."""
    home = home or data_home()
    corpus = corpus or statistics_corpus(loaded, layers, settings, home=home)
    return sensitivity_for(loaded, layers[-1], corpus.texts, home / "stats")


def methods_joint_moment(loaded: LoadedModel, methods: Iterable[EngineSettings],
                         layers: list[int], settings: StatisticsSettings, *,
                         home: Path | None = None,
                         corpus: StatisticsCorpus | None = None) -> torch.Tensor | None:
    """The joint key statistics of ``layers`` over the key statistics' corpus (cached
    beside them) when any of ``methods`` spreads over them jointly, else ``None``;
    ``corpus`` as for ``methods_sensitivity``."""
    if not any(m.spread.joint_layers for m in methods):
        return None
    home = home or data_home()
    stacked_key_size(loaded, layers)  # refuse a too-large system before sampling text
    corpus = corpus or statistics_corpus(loaded, layers, settings, home=home)
    return joint_moment_for(loaded, layers, corpus.texts, home / "stats")


def per_method_inputs(loaded: LoadedModel, methods: Mapping[str, EngineSettings],
                      settings: StatisticsSettings, *, home: Path | None = None,
                      ) -> tuple[dict[str, torch.Tensor | None], dict[str, torch.Tensor | None]]:
    """Per method, ``methods_sensitivity`` and ``methods_joint_moment`` over its own edit
    layers, as ``build_engine`` would give it: methods of other layer windows side by
    side each get their own last layer's F and their own layers' joint statistics. Methods
    that need the same are given one copy, read once."""
    shared: dict[tuple, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    sensitivities, joint_moments = {}, {}
    for name, method in methods.items():
        layers = method.edit_layers(loaded)
        need = (tuple(layers), method.target.needs_sensitivity, method.spread.joint_layers)
        if need not in shared:
            shared[need] = (
                methods_sensitivity(loaded, [method], layers, settings, home=home),
                methods_joint_moment(loaded, [method], layers, settings, home=home))
        sensitivities[name], joint_moments[name] = shared[need]
    return sensitivities, joint_moments


def engine_contexts(loaded: LoadedModel, *, home: Path | None = None) -> list[str]:
    """The context prefixes an engine for ``loaded`` uses, cached beside the key
    statistics (``contexts_for``)."""
    return contexts_for(loaded, (home or data_home()) / "stats")


def build_engine(
    loaded: LoadedModel,
    settings: EngineSettings,
    statistics_settings: StatisticsSettings | None = None,
    *,
    home: Path | None = None,
    cancelled: Cancelled = never,
    report: Progress = silent,
    optimiser: TargetOptimiser = optimise_targets,
) -> EditEngine:
    """An engine for ``loaded`` with cached statistics and context prefixes;
    ``cancelled`` may stop building it (``WorkCancelled``), ``report`` hears how far.
    ``optimiser`` runs its OPTIMIZATION stage (see ``EditEngine``). The ``natural``
    step rule's sensitivity and the joint spread's statistics come from the statistics'
    corpus.
    """
    layers = settings.edit_layers(loaded)
    statistics_settings = statistics_settings or StatisticsSettings()
    corpus = statistics_corpus(loaded, layers, statistics_settings, home=home,
                               cancelled=cancelled, report=report)
    stats = layer_statistics(loaded, layers, statistics_settings, home=home,
                             cancelled=cancelled, report=report, corpus=corpus)
    sensitivity = methods_sensitivity(loaded, [settings], layers, statistics_settings, home=home,
                                      corpus=corpus)
    joint_moment = methods_joint_moment(loaded, [settings], layers, statistics_settings,
                                        home=home, corpus=corpus)
    return EditEngine(loaded, settings, stats, engine_contexts(loaded, home=home),
                      optimiser=optimiser, sensitivity=sensitivity, joint_moment=joint_moment,
                      guards=engine_guards(loaded, settings))
