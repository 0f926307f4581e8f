"""Retrying a call to a remote end with exponential backoff."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def with_retries(call: Callable[[], T], *, attempts: int, backoff_seconds: float) -> T:
    """``call()``, tried up to ``attempts`` times, sleeping ``backoff * 2**n`` between.

    The last failure is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception:
            if attempt == attempts:
                raise
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
    raise ValueError(f"attempts must be at least 1, got {attempts}")
