"""``factsync bench solve``: MEMIT's per-layer solve, cached factor against a fresh solve.

A job's spread asks, at every edit layer and IME pass, for ``(A + K K^T)^-1 K`` with
``A = lambda C + K_p K_p^T`` of the key size. The engine factors A once per layer and
job and solves each pass through the factor with the Woodbury identity
(``spread.memit_update``); before, every pass solved the whole key-size system afresh.
Both run here on the same random system, on one device, and their deltas are compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from factsync.editing.delta import LayerDelta
from factsync.editing.spread import HeldSystem, memit_update

# Rank of the random part of C and of the preserved keys: enough to make both dense,
# small enough that building them is cheap beside the solves timed.
_SECOND_MOMENT_RANK = 256
_PRESERVED_KEYS = 256

Result = TypeVar("Result")


@dataclass(frozen=True)
class SolveTiming:
    """Seconds of one layer's solves at one key size and job size.

    Attributes:
        key_size: rows of the keys (the MLP's inner width).
        keys: keys in the job (facts times their contexts).
        fresh_seconds: one pass solved afresh (the former path).
        factorise_seconds: factoring A (once per layer and job).
        woodbury_seconds: one pass through the factor.
        max_relative_difference: largest difference between the two deltas, relative to
            the largest entry of the fresh one.
    """

    key_size: int
    keys: int
    fresh_seconds: float
    factorise_seconds: float
    woodbury_seconds: float
    max_relative_difference: float

    def job_seconds(self, passes: int) -> tuple[float, float]:
        """(former, cached) seconds of one layer over a job of ``passes`` IME passes."""
        return (passes * self.fresh_seconds,
                self.factorise_seconds + passes * self.woodbury_seconds)


def fresh_update(keys: torch.Tensor, residual: torch.Tensor, second_moment: torch.Tensor,
                 lam: float, preserved: torch.Tensor) -> LayerDelta:
    """``dW = R K^T (lambda C + K_p K_p^T + K K^T)^-1`` with one solve of the key size,
    as each pass did before the factor was cached."""
    k = keys.double()
    system = lam * second_moment + preserved + k @ k.T
    return LayerDelta(up=residual.float(), down=torch.linalg.solve(system, k).float())


def time_solves(key_size: int, keys: int, *, hidden: int = 64, lam: float = 10.0,
                device: torch.device | str = "cpu", seed: int = 0) -> SolveTiming:
    """Time both paths on a random positive definite system of ``key_size``."""
    device = torch.device(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device)

    spread = random(key_size, _SECOND_MOMENT_RANK)
    second_moment = spread @ spread.T / _SECOND_MOMENT_RANK + torch.eye(
        key_size, dtype=torch.float64, device=device)
    held_keys = random(key_size, _PRESERVED_KEYS)
    preserved = held_keys @ held_keys.T
    job_keys, residual = random(key_size, keys).float(), random(hidden, keys).float()

    fresh, fresh_seconds = _timed(
        lambda: fresh_update(job_keys, residual, second_moment, lam, preserved), device)
    held, factorise_seconds = _timed(
        lambda: HeldSystem.factorise(second_moment, lam, preserved, device), device)
    cached, woodbury_seconds = _timed(lambda: memit_update(job_keys, residual, held), device)
    scale = fresh.down.abs().max()
    difference = float((cached.down - fresh.down).abs().max() / scale)
    return SolveTiming(key_size, keys, fresh_seconds, factorise_seconds, woodbury_seconds,
                       difference)


def _timed(work: Callable[[], Result], device: torch.device) -> tuple[Result, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def format_solve_table(timings: list[SolveTiming], passes: int, layers: int) -> str:
    """One row per key size and job size, with a job's seconds over ``layers`` layers."""
    lines = [
        f"key size | keys | fresh solve s | factorise s | woodbury s | job of {passes} passes "
        f"x {layers} layers: former s | cached s | x faster | max rel diff",
        "-------- | ---- | ------------- | ----------- | ---------- | --------------------- "
        "| -------- | -------- | ------------",
    ]
    for t in timings:
        former, cached = t.job_seconds(passes)
        lines.append(
            f"{t.key_size} | {t.keys} | {t.fresh_seconds:.3f} | {t.factorise_seconds:.3f} | "
            f"{t.woodbury_seconds:.4f} | {former * layers:.2f} | {cached * layers:.2f} | "
            f"{former / cached:.1f} | {t.max_relative_difference:.1e}")
    return "\n".join(lines)
