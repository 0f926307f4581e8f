"""Second moments of each edited layer's keys over a text corpus.

MEMIT's update ``dW = R K^T (lambda C + K K^T)^-1`` needs C = E[k k^T], the mean outer
product of the keys (inputs of the MLP output projection) over ordinary text. The update
strength lambda is derived from ``k^T C^-1 k`` of typical keys, so a random sample of
keys is kept beside C.

``stats_cache`` keeps them on disk, so they are computed once per model, layer, corpus
and budget.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from factsync.editing.cancellation import Cancelled, WorkCancelled, never
from factsync.editing.derived_cache import DerivedStore
from factsync.editing.progress import Progress, silent
from factsync.models.hooks import capture_keys, forward_hooks
from factsync.models.loading import LoadedModel
from factsync.models.specs import get_module, key_value_dims
from factsync.typed_yaml import Choice

log = logging.getLogger(__name__)

# Keys kept for lambda: the median of k^T C^-1 k is stable to ~1% with 2000 of them.
SAMPLE_SIZE = 2000
# Ridge added to C's diagonal when it is singular, relative to its mean diagonal: far
# below any real eigenvalue, just enough for the Cholesky factorisation to succeed.
RIDGE_FRACTION = 1e-6


class ShrinkageTarget(Choice):
    """What a shrunk second moment is blended toward.

    ``isotropic``: ``m I``, m the mean eigenvalue of C; ``diagonal``: C's own diagonal,
    so every key unit keeps its variance and only the correlations between units
    shrink. Where a few units carry most of the variance (SmolLM2-135M's layer 2), the
    isotropic target hands every weak direction a share of theirs.
    """

    ISOTROPIC = "isotropic"
    DIAGONAL = "diagonal"


def shrinkage_diagonal(moment: torch.Tensor, target: ShrinkageTarget) -> torch.Tensor:
    """The diagonal of the matrix a square second moment is shrunk toward (float64):
    its mean diagonal everywhere (``isotropic``) or its own diagonal (``diagonal``)."""
    diagonal = moment.diagonal().to(torch.float64)
    if target is ShrinkageTarget.DIAGONAL:
        return diagonal.clone()
    return torch.full_like(diagonal, float(diagonal.mean()))


@dataclass
class KeyStatistics:
    """Key statistics of one layer, on the CPU.

    Attributes:
        second_moment: (key, key) float64 mean of ``k k^T`` over ``count`` tokens.
        count: number of tokens (keys) behind ``second_moment``.
        sample: (n, key) float32 uniform random sample of those keys, n up to
            ``SAMPLE_SIZE``; the same tokens for every layer of one computation.
        derived: where values derived from these statistics are kept (the statistics
            cache sets it); ``None`` derives them afresh every time.
        variant: how these statistics were made from the cached ones (``shrunk``), in
            the names of what is derived from them.
    """

    second_moment: torch.Tensor
    count: int
    sample: torch.Tensor
    derived: DerivedStore | None = field(default=None, repr=False, compare=False)
    variant: str = ""

    def __post_init__(self) -> None:
        moment, sample = self.second_moment, self.sample
        if moment.dim() != 2 or moment.shape[0] != moment.shape[1]:
            raise ValueError(f"second_moment must be square, got {tuple(moment.shape)}")
        if sample.dim() != 2 or sample.shape[1] != moment.shape[0]:
            raise ValueError(
                f"sample must be (n, {moment.shape[0]}) to match second_moment, "
                f"got {tuple(sample.shape)}"
            )
        if self.count <= 0:
            raise ValueError(f"count must be positive, got {self.count}")

    @property
    def key_size(self) -> int:
        """Dimension of the keys."""
        return self.second_moment.shape[0]

    def shrunk(self, weight: float,
               target: ShrinkageTarget = ShrinkageTarget.ISOTROPIC) -> KeyStatistics:
        """These statistics with C blended toward ``target`` by ``weight``:
        ``(1 - w) C + w D``, D from ``shrinkage_diagonal``; the trace is kept.

        The weakest directions of C gain variance, which makes updates that lean on them
        costlier; see ``SpreadSettings.second_moment_shrinkage`` for why that matters.
        """
        if not 0 <= weight < 1:
            raise ValueError(f"shrinkage weight must be in [0, 1), got {weight}")
        if weight == 0:
            return self
        moment = self.second_moment.to(torch.float64)
        blended = (1 - weight) * moment
        blended.diagonal().add_(weight * shrinkage_diagonal(moment, target))
        # The isotropic variant keeps its first name, so values derived before still match.
        name = "shrink" if target is ShrinkageTarget.ISOTROPIC else f"shrink-{target}"
        return KeyStatistics(second_moment=blended, count=self.count, sample=self.sample,
                             derived=self.derived, variant=f"{self.variant}/{name}={weight}")

    def remembered(self, name: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``make()``, computed once and kept with the statistics when they are cached;
        ``name`` (with this ``variant``) says what it is."""
        if self.derived is None:
            return make()
        return self.derived.get_or_make(f"{name}{self.variant}", make)

    def cholesky_factor(self, *, device: torch.device | str = "cpu") -> torch.Tensor:
        """The lower Cholesky factor of C (float64, on ``device``), with the ridge that
        ``mahalanobis`` describes when C is singular."""
        return _cholesky_with_ridge(self.second_moment.to(device, torch.float64))

    def mahalanobis(self, keys: torch.Tensor | None = None, *,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """``k^T C^-1 k`` for each row of ``keys`` (n, key), the sample by default; float64.

        Solved through a Cholesky factor of C, never an explicit inverse. C is positive
        semi-definite; when it is singular (fewer tokens than key dimensions, or key
        units that never fire) a ridge of ``RIDGE_FRACTION`` times C's mean diagonal is
        added, ten times more while the factorisation still fails. Directions of C with
        variance below the ridge then add almost nothing to ``k^T C^-1 k`` (instead of
        about one each); keys inside C's span are otherwise barely affected.
        """
        rows = (self.sample if keys is None else keys).to(device, torch.float64)  # (n, key)
        factor = self.cholesky_factor(device=device)
        solved = torch.cholesky_solve(rows.T, factor)  # (key, n) = C^-1 k
        return (rows.T * solved).sum(dim=0).cpu()

    def mahalanobis_per_dimension(self, second_moment: torch.Tensor) -> float:
        """``tr(C^-1 M) / key size``: the mean of ``k^T C^-1 k`` over keys whose second
        moment is M (key, key), per key dimension.

        It is 1 for the keys C was computed from (when C has full rank) and above 1 for
        keys that lean on directions C holds weak: a measure of how well C's corpus
        stands for the text M came from. C is factored as in ``mahalanobis``.
        """
        if second_moment.shape != self.second_moment.shape:
            raise ValueError(f"second_moment must be {tuple(self.second_moment.shape)}, "
                             f"got {tuple(second_moment.shape)}")
        factor = self.cholesky_factor()
        solved = torch.cholesky_solve(second_moment.to(torch.float64), factor)  # C^-1 M
        return float(solved.trace()) / self.key_size

    def relative_mahalanobis(self, keys: torch.Tensor) -> torch.Tensor:
        """``k^T C^-1 k`` of each row of ``keys`` (n, key) over the median of the sampled
        keys' (``median_mahalanobis``): above 1 where C leaves a key cheaper to move
        than a typical one."""
        return self.mahalanobis(keys) / self.median_mahalanobis()

    def median_mahalanobis(self, *, device: torch.device | str = "cpu") -> float:
        """Median over the sampled keys of ``k^T C^-1 k`` (see ``mahalanobis``).

        Over all the keys C was computed from, the mean of ``k^T C^-1 k`` is exactly the
        key size when C has full rank (a trace identity); the median is usually lower,
        the values being skewed to the right. The engine derives the
        update strength from it: lambda = median * (1 - f) / f moves a typical key by a
        fraction f of the requested change. Factored on ``device``; remembered with the
        statistics (``remembered``).
        """
        if self.sample.shape[0] == 0:
            raise ValueError("no sampled keys to take a median over")
        median = self.remembered("median_mahalanobis", lambda: torch.quantile(
            self.mahalanobis(device=device), 0.5).reshape(1))
        return float(median[0])


def _cholesky_with_ridge(matrix: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of ``matrix``, with a growing ridge when it is singular.

    Rounding can let a singular matrix factorise with tiny positive pivots, which would
    blow up ``C^-1 k``; so a squared pivot below ``RIDGE_FRACTION`` of the mean
    diagonal counts as singular too.
    """
    scale = float(matrix.diagonal().mean()) or 1.0
    ridge = RIDGE_FRACTION * scale
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0 and float(factor.diagonal().square().min()) >= ridge:
        return factor
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    # Each try multiplies the ridge by 10; the 7th equals C's mean diagonal.
    for _ in range(7):
        factor, info = torch.linalg.cholesky_ex(matrix + ridge * eye)
        if int(info) == 0:
            return factor
        ridge *= 10
    raise ValueError("second moment is not positive semi-definite (Cholesky failed)")


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the last needed layer has run."""


def compute_key_statistics(
    loaded: LoadedModel,
    layers: list[int],
    texts: list[str],
    *,
    token_budget: int,
    batch_size: int = 8,
    max_length: int = 256,
    sample_size: int = SAMPLE_SIZE,
    seed: int = 0,
    progress: bool = True,
    cancelled: Cancelled = never,
    report: Progress = silent,
) -> dict[int, KeyStatistics]:
    """Run the model over ``texts`` and collect key statistics of ``layers``.

    Each text is tokenised without special tokens and cut into windows of at most
    ``max_length`` tokens, every window led by ``loaded.prefix_ids`` (or by the start
    tokens the tokenizer adds itself when there is no prefix). Keys of every token
    except those leading tokens and padding are counted, in text order, until
    ``token_budget`` tokens are; if the texts run out first, a WARNING says so and the
    statistics cover what there was. One forward pass per batch serves all layers, and
    it stops after the last requested layer. Accumulation is in float64. The model is
    left unchanged.

    Args:
        loaded: the model.
        layers: decoder layers whose MLP output projections' inputs are the keys.
        texts: the corpus.
        token_budget: tokens to count.
        batch_size: windows per forward pass.
        max_length: tokens per window, leading tokens included.
        sample_size: keys kept per layer for ``median_mahalanobis``.
        seed: seed of the key sample.
        progress: show a tqdm progress bar over counted tokens.
        cancelled: asked before every batch; when it answers yes, ``WorkCancelled``.
        report: told the share of ``token_budget`` counted after every batch.
    """
    lead = lead_ids(loaded)
    _check_arguments(loaded, layers, texts, token_budget, batch_size, max_length, len(lead))
    layers = sorted(set(layers))
    device = loaded.device
    key_sizes = {layer: layer_key_size(loaded, layer) for layer in layers}
    sums = {
        layer: torch.zeros((size, size), dtype=torch.float64, device=device)
        for layer, size in key_sizes.items()
    }
    samples = {layer: torch.empty((0, size)) for layer, size in key_sizes.items()}
    priorities = torch.empty(0)
    generator = torch.Generator().manual_seed(seed)
    counted = 0
    with tqdm(total=token_budget, unit="tok", desc="key statistics", disable=not progress) as bar:
        for batch in window_batches(token_windows(loaded, texts, lead, max_length), batch_size):
            if cancelled():
                raise WorkCancelled("computing key statistics was stopped")
            keys = batch_keys(loaded, layers, batch, len(lead))
            taken = min(token_budget - counted, next(iter(keys.values())).shape[0])
            # Uniform sample without replacement: keep the keys of smallest random priority.
            priorities = torch.cat([priorities, torch.rand(taken, generator=generator)])
            keep = priorities.argsort()[:sample_size]
            priorities = priorities[keep]
            for layer in layers:
                chosen = keys[layer][:taken].to(torch.float64)  # (taken, key)
                sums[layer].addmm_(chosen.T, chosen)
                pooled = torch.cat([samples[layer], chosen.float().cpu()])
                samples[layer] = pooled[keep]
            counted += taken
            bar.update(taken)
            report("computing key statistics", counted / token_budget)
            if counted >= token_budget:
                break
    if counted == 0:
        raise ValueError("the corpus holds no tokens to compute key statistics over")
    if counted < token_budget:
        log.warning(
            "the corpus ran out after %d of the %d tokens budgeted for key statistics; "
            "the statistics cover %d tokens",
            counted,
            token_budget,
            counted,
        )
    return {
        layer: KeyStatistics(
            second_moment=(sums[layer] / counted).cpu(), count=counted, sample=samples[layer]
        )
        for layer in layers
    }


def _check_arguments(
    loaded: LoadedModel,
    layers: list[int],
    texts: list[str],
    token_budget: int,
    batch_size: int,
    max_length: int,
    lead_length: int,
) -> None:
    """Raise ``ValueError`` naming the first argument that cannot work."""
    if not layers:
        raise ValueError("no layers given to compute key statistics for")
    outside = [layer for layer in layers if not 0 <= layer < loaded.num_layers]
    if outside:
        raise ValueError(f"layers {outside} are outside the model's 0..{loaded.num_layers - 1}")
    if not texts:
        raise ValueError("the corpus is empty")
    if token_budget <= 0:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_length <= lead_length:
        raise ValueError(
            f"max_length {max_length} leaves no room after the {lead_length} leading tokens"
        )


def lead_ids(loaded: LoadedModel) -> list[int]:
    """Tokens leading every window: the prefix, or the tokenizer's own start tokens."""
    if loaded.prefix_ids:
        return list(loaded.prefix_ids)
    probe = loaded.tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = loaded.tokenizer("a", add_special_tokens=False)["input_ids"]
    cut = len(probe) - len(bare)
    return list(probe[:cut]) if cut > 0 and probe[cut:] == bare else []


def layer_key_size(loaded: LoadedModel, layer: int) -> int:
    """Key dimension of ``layer``'s MLP output projection, read by the spec's layout."""
    module = get_module(loaded.model, loaded.spec.mlp_out_path(layer))
    return key_value_dims(loaded.spec, module)[0]


def token_count(loaded: LoadedModel, texts: Iterable[str]) -> int:
    """The tokens of ``texts`` that ``compute_key_statistics`` would count, all of them."""
    return sum(len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
               for text in texts)


def token_windows(
    loaded: LoadedModel, texts: list[str], lead: list[int], max_length: int
) -> Iterator[list[int]]:
    """Yield token-id windows: ``lead`` then up to ``max_length - len(lead)`` text tokens."""
    room = max_length - len(lead)
    for text in texts:
        ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), room):
            yield lead + list(ids[start : start + room])


def window_batches(windows: Iterable[list[int]], batch_size: int) -> Iterator[list[list[int]]]:
    """Group an iterable of windows into lists of ``batch_size`` (the last may be shorter)."""
    batch: list[list[int]] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def padded_windows(loaded: LoadedModel, batch: list[list[int]],
                   lead_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch`` right-padded: (input ids, attention mask, counted), each (windows,
    longest). Counted are the tokens after the ``lead_length`` leading ones, not padding."""
    width = max(len(window) for window in batch)
    pad = loaded.tokenizer.pad_token_id
    pad = pad if pad is not None else 0
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, window in enumerate(batch):
        input_ids[row, : len(window)] = torch.tensor(window)
        mask[row, : len(window)] = 1
    # Right padding: default positions are right.
    counted = mask.bool()
    counted[:, :lead_length] = False
    return input_ids, mask, counted


@torch.no_grad()
def batch_keys(
    loaded: LoadedModel, layers: list[int], batch: list[list[int]], lead_length: int
) -> dict[int, torch.Tensor]:
    """Keys of every counted token of ``batch``: layer -> (tokens, key), in text order."""
    input_ids, mask, counted = padded_windows(loaded, batch, lead_length)
    device = loaded.device
    last = loaded.spec.mlp_out_path(max(layers))

    def halt(*_args: Any) -> None:
        raise _StopForward

    with (
        capture_keys(loaded, layers) as captured,
        forward_hooks(loaded.model, {last: halt}),
        contextlib.suppress(_StopForward),
    ):
        loaded.model(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False
        )
    counted = counted.to(device)
    return {layer: captured[layer][counted] for layer in layers}  # (tokens, key)
