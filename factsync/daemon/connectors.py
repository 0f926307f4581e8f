"""Building the configured connectors."""

from __future__ import annotations

import os

from factsync.connectors.base import Connector, FactSink
from factsync.connectors.files import FileConnector
from factsync.connectors.http import HttpConnector
from factsync.connectors.sql import SqlConnector
from factsync.daemon.config import ConnectorConfig, ConnectorType, DaemonConfig


def build_connector(spec: ConnectorConfig, config: DaemonConfig, sink: FactSink) -> Connector:
    """The connector ``spec`` describes, delivering to ``sink``."""
    if spec.type is ConnectorType.FILE:
        return FileConnector(
            name=spec.source_name, directory=config.under_data_dir(spec.path), sink=sink,
            debounce_seconds=spec.debounce_seconds, polling=spec.polling,
        )
    url = os.path.expandvars(spec.url or "")
    if spec.type is ConnectorType.SQL:
        return SqlConnector(
            name=spec.source_name, url=url, sink=sink, table=spec.table, query=spec.query,
            columns=spec.columns, poll_seconds=spec.poll_seconds,
            listen_channel=spec.listen_channel,
        )
    return HttpConnector(
        name=spec.source_name, url=url, sink=sink,
        headers={k: os.path.expandvars(v) for k, v in spec.headers.items()},
        poll_seconds=spec.poll_seconds, timeout_seconds=spec.timeout_seconds,
    )
