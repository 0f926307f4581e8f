"""What every connector talks to, and what it offers the daemon.

A connector reads rows from one source, validates each with ``parse_row`` and hands
good ones to ``FactSink.accept`` and bad ones to ``FactSink.reject``; one bad row never
holds back the rest. To add a source, write a class with ``name``, ``start``, ``stop``
and ``scan`` (a full read of the source) in one module and register it in the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from factsync.facts.records import FactRecord


class FactSink(Protocol):
    """Where connectors deliver rows."""

    def accept(self, record: FactRecord) -> None:
        """Take a valid fact row."""

    def reject(self, *, source: str, location: str, reason: str, raw: str) -> None:
        """Quarantine a row that could not be used."""


@dataclass
class ScanReport:
    """What one read of a source found."""

    rows: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


class Connector(Protocol):
    """A fact source the daemon runs."""

    name: str

    def start(self) -> None:
        """Begin watching the source for changes (non-blocking)."""

    def stop(self) -> None:
        """Stop watching; returns once no more rows will be delivered."""

    def scan(self) -> ScanReport:
        """Read the whole source now and deliver every row."""
