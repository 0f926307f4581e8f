"""Key statistics on disk: computed once per model, layer, corpus, budget and window."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from factsync import __version__
from factsync.cache_lock import computing
from factsync.durable import save_tensors
from factsync.editing.cancellation import Cancelled, never
from factsync.editing.corpus import corpus_digest
from factsync.editing.covariance import KeyStatistics, compute_key_statistics
from factsync.editing.derived_cache import DerivedStore
from factsync.editing.progress import Progress, silent
from factsync.models.loading import LoadedModel
from factsync.paths import data_home

log = logging.getLogger(__name__)

# Layout version of the cache files; bump when what is stored changes.
STATS_FORMAT = "1"


class CovarianceCacheError(RuntimeError):
    """A cached statistics file is unreadable, truncated, or not what its name says."""


class CovarianceCache:
    """Key statistics on disk, one safetensors file per model, layer, corpus and budget.

    Files live at ``<directory>/<fingerprint>/layer<L>-<corpus digest>-<budget>-len<M>
    .safetensors`` (M the window length) and are written to a temporary file that is then
    renamed, so a reader never sees half a file. ``get`` raises
    ``CovarianceCacheError`` on a damaged file; ``get_or_compute`` logs that at WARNING,
    recomputes the layer and replaces the file. Nothing is recomputed without an INFO
    log saying so.
    """

    def __init__(self, directory: Path | None = None) -> None:
        """Cache in ``directory``, by default ``data_home()/stats``."""
        self.directory = Path(directory) if directory is not None else data_home() / "stats"

    def path(
        self,
        fingerprint: str,
        layer: int,
        texts_digest: str,
        token_budget: int,
        *,
        max_length: int = 256,
    ) -> Path:
        """The file that holds (or would hold) the statistics of this key."""
        name = f"layer{layer}-{texts_digest}-{token_budget}-len{max_length}.safetensors"
        return self.directory / fingerprint / name

    def get(
        self,
        loaded: LoadedModel,
        layer: int,
        texts_digest: str,
        token_budget: int,
        *,
        max_length: int = 256,
    ) -> KeyStatistics | None:
        """Cached statistics, or ``None`` when there are none.

        Raises ``CovarianceCacheError`` when the file exists but is damaged or records
        another key than its name.
        """
        path = self.path(
            loaded.fingerprint, layer, texts_digest, token_budget, max_length=max_length
        )
        if not path.exists():
            return None
        expected = _metadata(loaded.fingerprint, layer, texts_digest, token_budget, max_length)
        stats = _read_statistics(path, expected)
        stats.derived = DerivedStore(derived_path(path))
        return stats

    def put(
        self,
        loaded: LoadedModel,
        layer: int,
        texts_digest: str,
        token_budget: int,
        stats: KeyStatistics,
        *,
        max_length: int = 256,
    ) -> Path:
        """Store ``stats`` atomically; returns the file's path. What was derived from
        statistics stored there before is dropped, and ``stats`` now keeps what is
        derived from it beside the file."""
        path = self.path(
            loaded.fingerprint, layer, texts_digest, token_budget, max_length=max_length
        )
        metadata = _metadata(loaded.fingerprint, layer, texts_digest, token_budget, max_length)
        metadata["count"] = str(stats.count)
        metadata["factsync_version"] = __version__
        tensors = {
            "second_moment": stats.second_moment.detach().to(torch.float64).cpu().contiguous(),
            "sample": stats.sample.detach().to(torch.float32).cpu().contiguous(),
        }
        save_tensors(path, tensors, metadata)
        derived = derived_path(path)
        derived.unlink(missing_ok=True)  # derived from statistics these replace
        stats.derived = DerivedStore(derived)
        return path

    def get_or_compute(
        self,
        loaded: LoadedModel,
        layers: list[int],
        texts: list[str],
        token_budget: int,
        *,
        batch_size: int = 8,
        max_length: int = 256,
        progress: bool = True,
        cancelled: Cancelled = never,
        report: Progress = silent,
    ) -> dict[int, KeyStatistics]:
        """Statistics of ``layers``: cached ones are read, missing ones computed together
        (``cancelled`` may stop that with ``WorkCancelled``; ``report`` hears how far).
        Computing holds the model's cache lock, so a second process waits and then reads
        the files instead."""
        digest = corpus_digest(texts)
        found, missing = self._cached(loaded, layers, digest, token_budget, max_length)
        if not missing:
            return self._report_reused(loaded, found, digest, token_budget)
        with computing(self.directory / loaded.fingerprint / "statistics", "key statistics"):
            found, missing = self._cached(loaded, layers, digest, token_budget, max_length)
            return self._compute_missing(
                loaded, texts, found, missing, digest, token_budget, batch_size=batch_size,
                max_length=max_length, progress=progress, cancelled=cancelled, report=report)

    def _cached(self, loaded: LoadedModel, layers: list[int], digest: str, token_budget: int,
                max_length: int) -> tuple[dict[int, KeyStatistics], list[int]]:
        """The cached statistics among ``layers``, and the layers without any."""
        found: dict[int, KeyStatistics] = {}
        missing: list[int] = []
        for layer in sorted(set(layers)):
            try:
                stats = self.get(loaded, layer, digest, token_budget, max_length=max_length)
            except CovarianceCacheError as exc:
                log.warning("%s; recomputing layer %d", exc, layer)
                stats = None
            if stats is None:
                missing.append(layer)
            else:
                found[layer] = stats
        return found, missing

    def _report_reused(self, loaded: LoadedModel, found: dict[int, KeyStatistics],
                       digest: str, token_budget: int) -> dict[int, KeyStatistics]:
        """Log that ``found`` came from the cache; ``found`` by layer."""
        if found:
            log.info(
                "reusing cached key statistics for layers %s of %s (corpus %s, %d tokens) from %s",
                sorted(found),
                loaded.name,
                digest,
                token_budget,
                self.directory / loaded.fingerprint,
            )
        return {layer: found[layer] for layer in sorted(found)}

    def _compute_missing(self, loaded: LoadedModel, texts: list[str],
                         found: dict[int, KeyStatistics], missing: list[int], digest: str,
                         token_budget: int, *, batch_size: int, max_length: int,
                         progress: bool, cancelled: Cancelled,
                         report: Progress) -> dict[int, KeyStatistics]:
        """Compute the ``missing`` layers together, cache them, and return all by layer."""
        self._report_reused(loaded, found, digest, token_budget)
        if missing:
            log.info(
                "computing key statistics for layers %s of %s over %d tokens (corpus %s)",
                missing,
                loaded.name,
                token_budget,
                digest,
            )
            computed = compute_key_statistics(
                loaded,
                missing,
                texts,
                token_budget=token_budget,
                batch_size=batch_size,
                max_length=max_length,
                progress=progress,
                cancelled=cancelled,
                report=report,
            )
            for layer, stats in computed.items():
                self.put(loaded, layer, digest, token_budget, stats, max_length=max_length)
            found = found | computed
        return {layer: found[layer] for layer in sorted(found)}


def derived_path(statistics_path: Path) -> Path:
    """Where what is derived from the statistics in ``statistics_path`` is kept."""
    return statistics_path.with_name(statistics_path.stem + ".derived.safetensors")


def _metadata(
    fingerprint: str, layer: int, texts_digest: str, token_budget: int, max_length: int
) -> dict[str, str]:
    """The key of a cache file, as stored in its safetensors metadata."""
    return {
        "format": STATS_FORMAT,
        "fingerprint": fingerprint,
        "layer": str(layer),
        "corpus_digest": texts_digest,
        "token_budget": str(token_budget),
        "max_length": str(max_length),
    }


def _read_statistics(path: Path, expected: dict[str, str]) -> KeyStatistics:
    """Read and check one cache file; ``CovarianceCacheError`` says what is wrong."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            second_moment = handle.get_tensor("second_moment")
            sample = handle.get_tensor("sample")
    except (OSError, SafetensorError, ValueError, KeyError, RuntimeError) as exc:
        raise CovarianceCacheError(f"key statistics file {path} is unreadable: {exc}") from exc
    differing = sorted(k for k, v in expected.items() if metadata.get(k) != v)
    if differing:
        raise CovarianceCacheError(
            f"key statistics file {path} records other {', '.join(differing)} than its name"
        )
    try:
        count = int(metadata.get("count", ""))
        stats = KeyStatistics(second_moment=second_moment, count=count, sample=sample)
    except ValueError as exc:
        raise CovarianceCacheError(f"key statistics file {path} is inconsistent: {exc}") from exc
    if second_moment.dtype != torch.float64 or not torch.isfinite(second_moment).all():
        raise CovarianceCacheError(
            f"key statistics file {path} holds a non-finite or non-float64 second moment"
        )
    return stats
