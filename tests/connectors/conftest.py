"""Connector-test fixtures: a real state store and the ingest sink in front of it.

- ``store``: a fresh ``StateStore`` in the test's temporary directory.
- ``ingest``: an ``Ingest`` over ``store`` with the built-in catalog and fresh metrics.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from factsync.daemon.ingest import Ingest
from factsync.daemon.metrics import Metrics
from factsync.facts.catalog import RelationCatalog
from factsync.store.store import StateStore


@pytest.fixture
def store(tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    yield store
    store.close()


@pytest.fixture
def ingest(store):
    return Ingest(store=store, catalog=RelationCatalog.built_in(),
                  metrics=Metrics(CollectorRegistry()))
