"""Job-layer fixtures.

- ``daemon``: a factory of ``Daemon``s, each what one process holds on the same data
  directory (a store, the models of a tiny llama, an AlphaEdit engine and the
  ``LiveVersion``), so a second call is a restart; ``promote_edit(n)`` promotes one of
  two prepared facts.
"""

from __future__ import annotations

import pytest
import torch

from factsync.editing.requests import EditRequest
from factsync.editing.spread import SpreadSettings
from factsync.facts.records import FactRecord
from factsync.jobs.live import LiveChanged, LiveVersion, Promotion
from factsync.jobs.model_state import ModelState
from factsync.registry.versions import VersionFiles
from factsync.store.records import Version
from factsync.store.store import StateStore

EDITS = [
    ("Paris", EditRequest("Paris", "The capital of {} is", "Rome", "France")),
    ("LinkedIn", EditRequest("LinkedIn", "{} is owned by", "Apple", "Microsoft")),
]
ALPHAEDIT = SpreadSettings(algorithm="alphaedit")


class Daemon:
    """What one daemon process holds: a store, the models, an engine and the owner."""

    def __init__(self, tmp_path, tiny_loaded, tiny_engine) -> None:  # noqa: ANN001
        self.store = StateStore(tmp_path / "state.sqlite")
        loaded = tiny_loaded()
        self.models = ModelState(loaded)
        self.engine = tiny_engine(loaded, spread=ALPHAEDIT)
        self.live = LiveVersion(store=self.store, versions=VersionFiles(tmp_path / "versions"),
                                models=self.models, engine=self.engine)
        self.events: list[LiveChanged] = []
        self.live.subscribe(self.events.append)

    edits = EDITS

    def promote_edit(self, n: int) -> Version:
        """Promote ``EDITS[n]``."""
        return self.promote(*EDITS[n])

    def promote(self, subject: str, request: EditRequest) -> Version:
        """Edit one fact and promote it, as the job pipeline does after its gates pass."""
        change = self.store.record_desired(
            record=FactRecord(subject, "P36", request.new_object, "test", "row"),
            relation="P36")
        job = self.store.create_job(change_ids=[change.id], policy_digest="p")
        result = self.engine.edit([request])
        result.delta.apply(self.models.work)  # the candidate the gates judged
        return self.live.promote(Promotion(
            job=job, result=result, facts=[{"subject": subject, "relation": "P36"}],
            applied={change.id: request.old_object}, report={}, policy_digest="p"))

    def snapshot(self) -> tuple[dict[int, torch.Tensor], str, str]:
        """Preserved keys, the worker's weights digest and the served one."""
        return self.engine.preserved(), self.models.digest(), self.models.digest(serving=True)


@pytest.fixture
def daemon(tmp_path, tiny_loaded, tiny_engine):
    """A factory: each call is a fresh process on the same data directory."""
    started: list[Daemon] = []

    def start() -> Daemon:
        started.append(Daemon(tmp_path, tiny_loaded, tiny_engine))
        return started[-1]

    yield start
    for each in started:
        each.store.close()


