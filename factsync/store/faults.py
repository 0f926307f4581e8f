"""Telling a state store that cannot write now (full, read-only, locked) from a bug."""

from __future__ import annotations

import sqlite3

UNWRITABLE_CODES = frozenset({
    13,  # SQLITE_FULL
    8,  # SQLITE_READONLY
    10,  # SQLITE_IOERR
    5,  # SQLITE_BUSY
    6,  # SQLITE_LOCKED
    14,  # SQLITE_CANTOPEN
})
"""SQLite primary result codes that mean the store cannot write now, not a bug."""
UNWRITABLE_MESSAGES = ("disk is full", "readonly database", "disk i/o error",
                       "database is locked", "unable to open database")
"""The same conditions by message, for errors without ``sqlite_errorcode`` (Python 3.10)."""


def unwritable_reason(exc: BaseException) -> str | None:
    """Why the store cannot write, if ``exc`` or an error it was raised during says so.

    Follows the chain of causes, so an error raised while handling a store failure
    still counts as one.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlite3.OperationalError):
            code = getattr(seen, "sqlite_errorcode", None)
            message = str(seen)
            if code is not None and (code & 0xFF) in UNWRITABLE_CODES:
                return message
            if code is None and any(m in message.lower() for m in UNWRITABLE_MESSAGES):
                return message
        seen = seen.__cause__ or seen.__context__
    return None
