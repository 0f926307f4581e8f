"""``RayExecutor``: the OPTIMIZATION stage and KPI scoring fanned out to Ray actors.

Each worker (``ray_worker.FleetWorker``) loads the base model from a path it can read
(shared storage on a cluster) and follows the driver's chain of deltas, which travel
once each through Ray's object store: low-rank factors, never whole weights. The driver
keeps everything else (the spread, the gates, the live pointer).

Work is cut into shares: one chunk of ``TargetSettings.chunk_size`` facts each, which
the engine optimises independently anyway, so the targets equal the in-process ones;
for scoring, one slice of the checks, probes and texts per worker. Idle workers take
the next share. A share whose worker dies, or does not answer within
``timeout_seconds`` (the worker is then killed as hung), runs again on another worker,
``attempts`` times at most; a worker that reports another chain than the driver's is
brought up to date, and dropped if that fails. Dropped workers are replaced before the
next call. The result is only ever built from shares computed on the right chain, so a
fault costs time, never a wrong or half-applied edit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from factsync.editing.cancellation import Cancelled, never, stop_if
from factsync.editing.delta import ModelDelta
from factsync.editing.requests import EditRequest
from factsync.editing.targets import TargetResult, TargetSettings, fact_chunks
from factsync.evaluation.kpis import EditCheck, Measurement, Prompted, combine
from factsync.executors.local import Chain, ExecutorError, FleetStatus
from factsync.executors.ray_worker import FleetWorker, VersionSkew, chain_key
from factsync.executors.settings import ExecutorSettings
from factsync.models.loading import LoadedModel

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
"""How often the driver checks for a stop request and for shares past their time."""
_FAILED = object()
"""What ``_collect`` returns for a share that must run again."""
START_SECONDS = 600.0
"""A new worker has at least this long to load the model and follow the chain: loading
a large model takes minutes, far longer than a share of work should."""


@dataclass
class _Worker:
    handle: Any  # the actor
    name: str


class RayExecutor:
    """An ``Executor`` whose workers are Ray actors.

    Args:
        source: the base model's directory (or ``default``), as the workers will read it.
        settings: the ``executor:`` settings (address, workers, resources, timeouts).
        device: the workers' device (``auto`` takes the GPU Ray gives each, if any).
        dtype: the model's dtype.
        edit_layers: the edit layers, whose weights a bf16 or fp16 model holds in float32
            (``None``: the model's default window), as the driver's model does.
    """

    def __init__(self, source: str, settings: ExecutorSettings, *, device: str = "auto",
                 dtype: str = "float32", edit_layers: Sequence[int] | None = None) -> None:
        # Ray's crash handler would take SIGTERM, which the daemon handles itself to
        # stop cleanly, and make the process abort as it exits.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        import ray

        self._ray = ray
        self._settings = settings
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            if settings.address:
                ray.init(address=settings.address, logging_level=logging.WARNING)
            else:
                ray.init(include_dashboard=False, logging_level=logging.WARNING)
        self._actor = ray.remote(FleetWorker).options(
            num_cpus=settings.cpus_per_worker, num_gpus=settings.gpus_per_worker,
            max_restarts=0, max_concurrency=1)
        self._source, self._device, self._dtype = str(source), device, dtype
        self._edit_layers = None if edit_layers is None else list(edit_layers)
        self._labels: list[str] = []
        self._refs: dict[str, Any] = {}  # label -> its delta in the object store
        self._workers: list[_Worker] = []
        self._busy = 0
        self._failures = 0
        self._started = 0
        self._last_drop = ""
        self._lock = threading.Lock()  # status() reads from other threads
        self._calls = threading.RLock()  # one call at a time uses the workers
        self._top_up()

    def status(self) -> FleetStatus:
        """Live, busy and lost workers."""
        with self._lock:
            return FleetStatus(len(self._workers), self._busy, self._failures)

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers, in order."""
        return self._ray.get([w.handle.pid.remote() for w in self._workers])

    def follow(self, chain: Chain) -> None:
        """Put the deltas new in ``chain`` in the object store and bring every worker
        to it; a worker that fails to follow is dropped."""
        labels = [label for label, _ in chain]
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels of a chain must be unique, got {labels}")
        with self._calls:
            self._refs = {label: self._refs.get(label) or self._ray.put(delta)
                          for label, delta in chain}
            self._labels = labels
            self._bring_up_to_date(list(self._workers))

    def optimise(
        self, loaded: LoadedModel, requests: list[EditRequest], layer: int,
        contexts: list[str], settings: TargetSettings, *, use_neighbours: bool,
        cancelled: Cancelled = never, applied: ModelDelta | None = None,
        sensitivity: torch.Tensor | None = None,
    ) -> TargetResult:
        """``optimise_targets`` with its chunks spread over the workers."""
        with self._calls:
            return self._optimise(loaded, requests, layer, contexts, settings,
                                  use_neighbours, cancelled, applied, sensitivity)

    def _optimise(self, loaded: LoadedModel, requests: list[EditRequest], layer: int,
                  contexts: list[str], settings: TargetSettings, use_neighbours: bool,
                  cancelled: Cancelled, applied: ModelDelta | None,
                  sensitivity: torch.Tensor | None) -> TargetResult:
        extra = self._ray.put(applied) if applied is not None and applied.layers else None
        metric = self._ray.put(sensitivity.cpu()) if sensitivity is not None else None
        key = chain_key(self._labels)
        parts = self._run([
            lambda w, chunk=chunk: w.optimise.remote(key, chunk, layer, contexts, settings,
                                                     use_neighbours, extra, metric)
            for chunk in fact_chunks(requests, settings)], cancelled)
        device = loaded.device
        return TargetResult(
            z=torch.cat([p.z for p in parts]).to(device),
            initial=torch.cat([p.initial for p in parts]).to(device),
            probability=[x for p in parts for x in p.probability],
            steps=[x for p in parts for x in p.steps],
        )

    def measure(
        self, loaded: LoadedModel, checks: Sequence[EditCheck], retention: Sequence[Prompted],
        fluency_texts: Sequence[str], *, applied: ModelDelta | None = None,
    ) -> Measurement:
        """``measure`` with the checks, probes and texts sliced over the workers."""
        with self._calls:
            return self._measure(checks, retention, fluency_texts, applied)

    def _measure(self, checks: Sequence[EditCheck], retention: Sequence[Prompted],
                 fluency_texts: Sequence[str], applied: ModelDelta | None) -> Measurement:
        extra = self._ray.put(applied) if applied is not None and applied.layers else None
        slices = max(1, len(self._workers))
        key = chain_key(self._labels)
        parts = self._run([
            lambda w, i=i: w.measure.remote(key, _slice(checks, i, slices),
                                            _slice(retention, i, slices),
                                            _slice(fluency_texts, i, slices), extra)
            for i in range(slices)], never)
        return combine(parts)

    def close(self) -> None:
        """Kill the workers, and stop Ray if this executor started or joined it."""
        for worker in self._workers:
            self._ray.kill(worker.handle)
        self._workers = []
        if self._owns_ray:
            self._ray.shutdown()

    def _run(self, shares: list[Callable[[Any], Any]], cancelled: Cancelled) -> list[Any]:
        """Every share's result, in order, each computed by some worker on the
        driver's chain."""
        self._top_up()
        results: dict[int, Any] = {}
        waiting = deque(range(len(shares)))
        attempts = [0] * len(shares)
        running: dict[Any, tuple[int, _Worker, float]] = {}  # ref -> share, worker, deadline
        try:
            while waiting or running:
                idle = self._idle(running)
                while waiting and idle:
                    share, worker = waiting.popleft(), idle.pop(0)
                    attempts[share] += 1
                    deadline = time.monotonic() + self._settings.timeout_seconds
                    running[shares[share](worker.handle)] = (share, worker, deadline)
                self._set_busy(len(running))
                if not running:
                    self._top_up()  # every worker was dropped: start new ones
                    if not self._workers:
                        raise ExecutorError(f"no Ray worker could start: {self._last_drop}")
                    continue
                ready, _ = self._ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                stop_if(cancelled)
                for ref in ready:
                    share, worker, _ = running.pop(ref)
                    result = self._collect(ref, worker)
                    if result is _FAILED:
                        self._retry(share, attempts, waiting)
                    else:
                        results[share] = result
                now = time.monotonic()
                for ref, (share, worker, deadline) in list(running.items()):
                    if now > deadline:
                        del running[ref]
                        self._drop(worker, f"no answer within {self._settings.timeout_seconds:g}s")
                        self._retry(share, attempts, waiting)
        finally:
            for ref in running:
                self._ray.cancel(ref, force=True)
            self._set_busy(0)
        return [results[i] for i in range(len(shares))]

    def _idle(self, running: dict[Any, tuple[int, _Worker, float]]) -> list[_Worker]:
        taken = {id(worker) for _, worker, _ in running.values()}
        return [w for w in self._workers if id(w) not in taken]

    def _collect(self, ref: Any, worker: _Worker) -> Any:
        """The result ``ref`` holds, or ``_FAILED`` after resynchronising or dropping
        the worker that failed it."""
        ray = self._ray
        try:
            return ray.get(ref)
        except VersionSkew as skew:
            log.warning("Ray worker %s: %s; bringing it up to date", worker.name, skew)
            self._bring_up_to_date([worker])
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            self._drop(worker, f"it died ({type(exc).__name__})")
        return _FAILED

    def _retry(self, share: int, attempts: list[int], waiting: deque[int]) -> None:
        if attempts[share] >= self._settings.attempts:
            raise ExecutorError(f"a share of the work failed {attempts[share]} time(s) on Ray "
                                f"workers; see the log")
        waiting.appendleft(share)

    def _bring_up_to_date(self, workers: list[_Worker], *, starting: bool = False) -> None:
        """Have ``workers`` follow the driver's chain, all at once; drop those that fail
        or take longer than ``timeout_seconds`` (``START_SECONDS`` at least when
        ``starting``: they load the model first)."""
        key = chain_key(self._labels)
        deltas = [self._refs[label] for label in self._labels]
        calls = [(w, w.handle.follow.remote(self._labels, deltas)) for w in workers]
        seconds = self._settings.timeout_seconds
        deadline = time.monotonic() + (max(seconds, START_SECONDS) if starting else seconds)
        for worker, call in calls:
            try:
                got = self._ray.get(call, timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 (a worker that cannot follow is dropped)
                self._drop(worker, f"it could not follow the live version ({exc})")
                continue
            if got != key:
                self._drop(worker, f"it carries chain {got} after following {key}")

    def _drop(self, worker: _Worker, why: str) -> None:
        log.warning("Ray worker %s dropped: %s", worker.name, why)
        self._last_drop = why
        if worker in self._workers:
            self._workers.remove(worker)
        with self._lock:
            self._failures += 1
        self._ray.kill(worker.handle)

    def _top_up(self) -> None:
        """Start workers until there are as many as configured, each on the driver's
        chain; those that fail to start are dropped (and counted) until the next call."""
        missing = self._settings.workers - len(self._workers)
        if missing <= 0:
            return
        threads = max(1, int(self._settings.cpus_per_worker))
        started = []
        for _ in range(missing):
            self._started += 1
            handle = self._actor.remote(self._source, device=self._device, dtype=self._dtype,
                                        threads=threads, edit_layers=self._edit_layers)
            started.append(_Worker(handle, f"#{self._started}"))
        log.info("starting %d Ray worker(s) on %s", len(started), self._source)
        self._workers += started
        self._bring_up_to_date(started, starting=True)

    def _set_busy(self, busy: int) -> None:
        with self._lock:
            self._busy = busy


def _slice(items: Sequence[Any], index: int, parts: int) -> list[Any]:
    """The ``index``-th of ``parts`` contiguous, nearly equal slices of ``items``."""
    size, extra = divmod(len(items), parts)
    start = index * size + min(index, extra)
    return list(items[start : start + size + (index < extra)])
