"""Telling the caller how far long work has got, so a daemon can show it while it starts."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, float], None]
"""Told the stage long work is in (``"sampling the corpus"``) and the share done, 0 to 1."""


def silent(stage: str, done: float) -> None:
    """The default listener: nobody is told."""
