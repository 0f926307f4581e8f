"""Stopping an edit part-way: the caller's question, asked between optimisation steps.

An edit of a job can run for minutes. A daemon told to stop cannot wait that long, and
a process that exits while a thread is inside torch can abort, so the engine asks
``cancelled()`` before every optimisation step and every spread, and gives up with
``EditCancelled``, leaving the model's weights as it found them.
"""

from __future__ import annotations

from collections.abc import Callable

Cancelled = Callable[[], bool]
"""Answers whether the caller wants the edit stopped."""


class EditCancelled(Exception):
    """The caller stopped the edit; the model's weights are as they were before it."""


def never() -> bool:
    """The default question: an edit that nobody stops."""
    return False


def stop_if(cancelled: Cancelled) -> None:
    """Raise ``EditCancelled`` when ``cancelled()`` says so."""
    if cancelled():
        raise EditCancelled("the edit was stopped before it finished")
