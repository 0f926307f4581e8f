"""``build_executor``: the executor the settings name."""

from __future__ import annotations

from collections.abc import Sequence

from factsync.executors.local import Executor, LocalExecutor
from factsync.executors.settings import ExecutorSettings, ExecutorType


class ExecutorUnavailable(RuntimeError):
    """The executor asked for cannot run here (Ray is not installed)."""


def build_executor(settings: ExecutorSettings, *, source: str, device: str = "auto",
                   dtype: str = "float32", edit_layers: Sequence[int] | None = None
                   ) -> Executor:
    """The in-process executor, or a Ray fleet whose workers load ``source`` (holding
    ``edit_layers`` in float32 as ``models.precision`` says).

    Raises:
        ExecutorUnavailable: Ray is asked for but not installed.
    """
    if settings.type is ExecutorType.LOCAL:
        return LocalExecutor()
    try:
        from factsync.executors.ray_fleet import RayExecutor
    except ImportError as exc:
        raise ExecutorUnavailable(
            f"executor type ray needs Ray: pip install 'factsync[ray]' ({exc})") from exc
    return RayExecutor(source, settings, device=device, dtype=dtype, edit_layers=edit_layers)
