"""``SqlConnector``: facts from a database table or query, through a SQLAlchemy URL.

Between full reads it polls incrementally: only rows whose ``updated_at`` column is
greater than the largest value seen so far. With PostgreSQL it can also LISTEN on a
channel, so that a trigger's NOTIFY wakes the poll at once. Column names are mapped
from the fact fields in the configuration.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from factsync.connectors.base import ConnectorHealth, FactSink, ScanReport, SourceRow, deliver_rows
from factsync.connectors.polling import PollThread

log = logging.getLogger(__name__)

FIELDS = ("subject", "relation", "object", "id", "updated_at", "deleted")
REQUIRED = ("subject", "relation", "object")


class SqlConnector:
    """Facts from one table or query.

    Building one does no I/O: the first read (``scan`` or ``poll``) connects and learns
    the source's columns, and a database that is down then is reported like any failed
    read and asked again by the next.

    Args:
        name: source name stamped on its facts.
        url: SQLAlchemy database URL, e.g. ``postgresql+psycopg://user@host/db``.
        sink: where rows go.
        table: the table to read (or give ``query``).
        query: a SELECT whose columns include the mapped ones.
        columns: fact field -> column name; unmapped fields use their own name, and
            ``id``, ``updated_at``, ``deleted`` are optional.
        poll_seconds: interval of the incremental poll (needs an ``updated_at`` column).
        listen_channel: a PostgreSQL channel whose NOTIFY triggers a poll.
    """

    def __init__(
        self, *, name: str, url: str, sink: FactSink, table: str | None = None,
        query: str | None = None, columns: Mapping[str, str] | None = None,
        poll_seconds: float = 10.0, listen_channel: str | None = None,
    ) -> None:
        if (table is None) == (query is None):
            raise ValueError(f"{name}: give exactly one of table and query")
        unknown = set(columns or {}) - set(FIELDS)
        if unknown:
            raise ValueError(f"{name}: unknown fact field(s) in columns: {sorted(unknown)}")
        self.name = name
        self.health = ConnectorHealth()
        self._sink = sink
        # Creating an engine only parses the URL; the first read connects.
        self._engine = sa.create_engine(url, pool_pre_ping=True)
        self._table = table
        self._query = query
        self._label = table or "query"
        self._columns = {f: (columns or {}).get(f, f) for f in FIELDS}
        self._source: sa.FromClause | None = None
        self._watermark: Any = None
        self._lock = threading.Lock()
        self._poller = PollThread(name, self.poll, poll_seconds)
        self._listen_channel = listen_channel
        self._listener: threading.Thread | None = None

    def _described(self) -> sa.FromClause:
        """The table or query with the columns the database reports, asked on first use.

        Raises ``sqlalchemy.exc.SQLAlchemyError`` while the database cannot tell (it is
        down, or the table is missing); the next read asks again.
        """
        if self._source is not None:
            return self._source
        if self._table is not None:
            inspector = sa.inspect(self._engine)
            schema, _, bare = self._table.rpartition(".")
            present = {c["name"] for c in inspector.get_columns(bare, schema=schema or None)}
            self._source = sa.table(bare, *[sa.column(c) for c in present],
                                    schema=schema or None)
        else:
            with self._engine.connect() as connection:
                present = list(connection.execute(sa.text(self._query)).keys())
            self._source = sa.text(self._query).columns(
                *[sa.column(c) for c in present]).subquery("src")
        return self._source

    def start(self) -> None:
        """Poll incrementally, and LISTEN when a channel is configured."""
        self._poller.start()
        if self._listen_channel:
            self._listener = threading.Thread(target=self._listen, name=f"{self.name}-listen",
                                              daemon=True)
            self._listener.start()

    def stop(self) -> None:
        """Stop polling and listening."""
        self._poller.stop()
        if self._listener is not None:
            self._listener.join(timeout=10)
        self._engine.dispose()

    def scan(self) -> ScanReport:
        """Read every row (the first read also learns the source's columns)."""
        return self._read(incremental=False)

    def poll(self) -> ScanReport:
        """Read the rows changed since the last read (all rows without ``updated_at``)."""
        return self._read(incremental=True)

    def _column(self, source: sa.FromClause, field: str) -> sa.ColumnElement | None:
        return source.c.get(self._columns[field])

    def _select(self, source: sa.FromClause, *, incremental: bool) -> sa.Select:
        """The mapped columns, oldest change first; only newer ones when ``incremental``."""
        picked = [(f, c) for f in FIELDS if (c := self._column(source, f)) is not None]
        statement = sa.select(*[column.label(f) for f, column in picked])
        updated = self._column(source, "updated_at")
        if updated is not None:
            statement = statement.order_by(updated)
            if incremental and self._watermark is not None:
                statement = statement.where(updated > self._watermark)
        return statement

    def _read(self, *, incremental: bool) -> ScanReport:
        report = ScanReport()
        with self._lock:
            try:
                source = self._described()
                missing = [self._columns[f] for f in REQUIRED
                           if self._column(source, f) is None]
                if missing:
                    message = f"{self._label} has no column(s) {', '.join(missing)}"
                    self.health.failed("schema", message)
                    report.errors.append(message)
                    return report
                statement = self._select(source, incremental=incremental)
                with self._engine.connect() as connection:
                    rows = [dict(r._mapping) for r in connection.execute(statement)]
            except sa.exc.OperationalError as exc:
                self.health.failed("connection", str(exc.orig))
                report.errors.append(str(exc.orig))
                return report
            except sa.exc.SQLAlchemyError as exc:
                self.health.failed("database", str(exc))
                report.errors.append(str(exc))
                return report
            deliver_rows(self._sink, (self._raw_row(row, number)
                                      for number, row in enumerate(rows, start=1)),
                         source=self.name, report=report)
            for row in rows:
                stamp = row.get("updated_at")
                if stamp is not None and (self._watermark is None or stamp > self._watermark):
                    self._watermark = stamp
        self.health.succeeded()
        return report

    def _raw_row(self, row: dict[str, Any], number: int) -> SourceRow:
        location = f"{self._label}:{row['id'] if row.get('id') is not None else f'row {number}'}"
        return {k: _plain(k, v) for k, v in row.items() if v is not None}, location, None

    def _listen(self) -> None:
        import psycopg

        url = self._engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while not self._poller.stopping:
            try:
                with psycopg.connect(conninfo, autocommit=True) as connection:
                    connection.execute(f'LISTEN "{self._listen_channel}"')
                    log.info("%s: listening on channel %s", self.name, self._listen_channel)
                    while not self._poller.stopping:
                        for _ in connection.notifies(timeout=1.0, stop_after=1):
                            self._poller.wake()
            except psycopg.Error as exc:
                self.health.failed("listen", str(exc))
                log.warning("%s: LISTEN failed (%s); retrying", self.name, exc)
                self._poller.pause(5.0)


def _plain(field: str, value: Any) -> Any:
    """A database value as a feed row holds it (dates as ISO text, 0/1 flags as bools)."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if field == "deleted" and isinstance(value, int):
        return bool(value)
    return value
