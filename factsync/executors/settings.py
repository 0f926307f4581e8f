"""``ExecutorSettings``: in-process work, or workers on a Ray cluster."""

from __future__ import annotations

from dataclasses import dataclass

from factsync.typed_yaml import Choice


class ExecutorType(Choice):
    """Where the parallel work runs."""

    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True)
class ExecutorSettings:
    """The ``executor:`` section of the daemon's configuration.

    Attributes:
        type: ``local`` (in the daemon's process) or ``ray``.
        address: an existing Ray cluster (``auto``, ``ray://head:10001``); empty starts
            a Ray instance on this machine.
        workers: Ray actors, each with its own copy of the model.
        gpus_per_worker: GPUs each worker reserves (fractions share one GPU).
        cpus_per_worker: CPU cores each worker reserves; torch uses as many threads.
        timeout_seconds: a share of work not back within this is taken from its worker
            (which is killed as hung) and run again elsewhere; a worker that does not
            follow a new live version within it is dropped. A new worker has at least
            ten minutes to load the model.
        attempts: runs of one share at most, across workers, before the work fails.
    """

    type: ExecutorType = ExecutorType.LOCAL
    address: str = ""
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    timeout_seconds: float = 600.0
    attempts: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", ExecutorType.parse(self.type, "executor.type"))
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        for name in ("gpus_per_worker", "cpus_per_worker"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be positive, got {self.timeout_seconds}")
