"""Stopping long work part-way: the caller's question, asked between small steps.

An edit of a job, sampling the corpus or computing key statistics can run for minutes.
A daemon told to stop cannot wait that long, and a process that exits while a thread is
inside torch can abort, so such work asks ``cancelled()`` between small steps (an
optimisation step, a spread, a sampled token, a batch of keys) and gives up with
``WorkCancelled``; an edit raises ``EditCancelled``, leaving the model's weights as it
found them.
"""

from __future__ import annotations

from collections.abc import Callable

Cancelled = Callable[[], bool]
"""Answers whether the caller wants the work stopped."""


class WorkCancelled(Exception):
    """The caller stopped long work part-way."""


class EditCancelled(WorkCancelled):
    """The caller stopped the edit; the model's weights are as they were before it."""


def never() -> bool:
    """The default question: work that nobody stops."""
    return False


def stop_if(cancelled: Cancelled) -> None:
    """Raise ``EditCancelled`` when ``cancelled()`` says so."""
    if cancelled():
        raise EditCancelled("the edit was stopped before it finished")
