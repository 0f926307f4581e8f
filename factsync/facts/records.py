"""A fact as a feed states it, and the validation every connector applies to raw rows."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

MAX_FIELD_CHARS = 500
"""Longest subject, relation or object accepted; longer rows are quarantined."""

KNOWN_FIELDS = frozenset({"subject", "relation", "object", "id", "updated_at", "deleted"})


class RowError(ValueError):
    """A feed row that cannot become a fact; the message is the quarantine reason."""


@dataclass(frozen=True)
class FactRecord:
    """One row of a fact feed.

    Attributes:
        subject: what the fact is about, e.g. ``"France"``.
        relation: a relation id or alias from the catalog, e.g. ``"P36"`` or ``"capital"``.
        object: the value, e.g. ``"Paris"``; empty for a deletion.
        source: the connector that produced it, e.g. ``"file:facts"``.
        location: where in the source, e.g. ``"capitals.jsonl:3"``.
        record_id: the feed's own id for the row, when it has one.
        updated_at: the feed's timestamp or version for the row, when it has one.
        deleted: the feed says the fact no longer holds.
    """

    subject: str
    relation: str
    object: str
    source: str
    location: str
    record_id: str | None = None
    updated_at: str | None = None
    deleted: bool = False


def parse_row(raw: Any, *, source: str, location: str) -> FactRecord:
    """Validate one raw row (a mapping) into a ``FactRecord``.

    Raises:
        RowError: naming the field and what is wrong with it.
    """
    if not isinstance(raw, dict):
        raise RowError(f"expected an object with subject, relation, object; got {_kind(raw)}")
    unknown = sorted(str(key) for key in raw if key not in KNOWN_FIELDS)
    if unknown:
        raise RowError(f"unknown field(s) {', '.join(unknown)}")
    deleted = _flag(raw.get("deleted", False))
    subject = _text(raw, "subject")
    relation = _text(raw, "relation")
    value = raw.get("object")
    obj = "" if deleted and value in (None, "") else _text(raw, "object")
    return FactRecord(
        subject=subject,
        relation=relation,
        object=obj,
        source=source,
        location=location,
        record_id=_optional_text(raw, "id"),
        updated_at=_optional_text(raw, "updated_at"),
        deleted=deleted,
    )


def _text(raw: dict, field: str) -> str:
    value = raw.get(field)
    if value is None:
        raise RowError(f"missing field '{field}'")
    if not isinstance(value, str):
        raise RowError(f"field '{field}' must be a string, got {_kind(value)}")
    value = unicodedata.normalize("NFC", value).strip()
    if not value:
        raise RowError(f"field '{field}' is empty")
    if len(value) > MAX_FIELD_CHARS:
        raise RowError(f"field '{field}' is {len(value)} characters, more than {MAX_FIELD_CHARS}")
    if any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in value):
        raise RowError(f"field '{field}' holds control or invisible characters")
    return value


def _optional_text(raw: dict, field: str) -> str | None:
    value = raw.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"field '{field}' must be a string or number, got {_kind(value)}")
    return _text({field: str(value)}, field)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
        return value.strip().lower() == "true"
    raise RowError(f"field 'deleted' must be true or false, got {value!r}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
