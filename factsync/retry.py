"""Retrying a call to a remote end with exponential backoff.

Only failures that may pass are retried: the network (refused, reset, timed out) and
HTTP answers that say "try later" (5xx, 408, 429). A 4xx answer, a 304 and any bug
surface at once, so a wrong token or URL is reported on the first try rather than
after a back-off.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

RETRIED_HTTP_CODES = frozenset({408, 429})
"""4xx answers that ask the client to try again."""


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of a remote end that may pass on its own."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in RETRIED_HTTP_CODES
    return isinstance(exc, OSError)


def with_retries(
    call: Callable[[], T], *, attempts: int, backoff_seconds: float,
    retry_if: Callable[[BaseException], bool] = transient,
) -> T:
    """``call()``, tried up to ``attempts`` times while it fails with an error
    ``retry_if`` accepts, sleeping ``backoff * 2**n`` between tries.

    The last failure, or the first that is not retried, is raised.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    for attempt in range(1, attempts):
        try:
            return call()
        except Exception as exc:
            if not retry_if(exc):
                raise
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
    return call()
