"""``LiveVersion``: the one owner of the live version.

Only this class moves the live pointer. It owns what a version is made of besides its
row in the store: the version files (delta, engine state, manifest), the in-memory
models and the engine's per-version state. Promotion, rollback (the monitor's or an
operator's) and start-up all go through it, and each ends in one ``LiveChanged`` event
that metrics, alerts and exports subscribe to.

Ordering: version files are written and synced before the store's promote transaction
points at them, and the models and engine follow the store only after it committed, so
a crash anywhere leaves the store's live version whole and rebuildable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from factsync.editing.delta import ModelDelta
from factsync.editing.engine import EditEngine, EditResult
from factsync.editing.engine_state import StateFile
from factsync.executors.chain import DeltaChain
from factsync.executors.local import Executor, LocalExecutor
from factsync.failpoints import failpoint
from factsync.jobs.model_state import ModelState
from factsync.registry.versions import VersionFiles
from factsync.store.records import Job, Version
from factsync.store.store import StateStore

log = logging.getLogger(__name__)


class LiveEvent(str, Enum):
    """Why the live version changed; the value is what exports and logs show."""

    STARTED = "started"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class LiveChanged:
    """The live version changed (or was restored at start-up).

    Attributes:
        event: why.
        version: the version live now.
        previous: the version live before (``None`` at start-up).
        trigger: who asked for a rollback (``monitor`` or ``operator``).
        reason: a sentence for logs and alerts.
        rolled_back: the versions a rollback undid, newest first.
        quarantined: facts a rollback newly quarantined for an operator.
    """

    event: LiveEvent
    version: Version
    previous: Version | None = None
    trigger: str | None = None
    reason: str = ""
    rolled_back: list[str] = field(default_factory=list)
    quarantined: int = 0


Listener = Callable[[LiveChanged], object]


@dataclass(frozen=True)
class Promotion:
    """What a passing job makes live.

    Attributes:
        job: the job.
        result: the engine's edit (its delta and the state it leaves).
        facts: the version's facts, as its manifest lists them.
        applied: change id -> old object, for the store.
        report: the KPI report the gates passed.
        policy_digest: the policy that gated it.
    """

    job: Job
    result: EditResult
    facts: list[dict]
    applied: dict[int, str]
    report: dict
    policy_digest: str


class LiveVersion:
    """Moves the live pointer and keeps the models and engine on the version it names.

    Args:
        store: the state store (the pointer's home).
        versions: the version files.
        models: the worker's and the served model.
        engine: the edit engine, whose per-version state follows the live version.
        executor: where the engine's optimisation and the KPI scoring run; its workers
            (if any) follow the live version's chain of deltas.
    """

    def __init__(self, *, store: StateStore, versions: VersionFiles, models: ModelState,
                 engine: EditEngine, executor: Executor | None = None) -> None:
        self._store = store
        self._versions = versions
        self._models = models
        self._engine = engine
        self._executor = executor or LocalExecutor()
        self._chain = DeltaChain()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` after every change of the live version, in subscription
        order; a listener that raises is logged and the others still run."""
        self._listeners.append(listener)

    def restore(self) -> LiveChanged:
        """Set the models and engine to the store's live version (start-up)."""
        live = self._store.live_version()
        self._rebuild(live)
        return self._publish(LiveChanged(LiveEvent.STARTED, live, reason="daemon started"))

    def promote(self, promotion: Promotion) -> Version:
        """Write the version's files, make it live in one store transaction, then apply
        it to the served model and the engine."""
        parent = self._store.live_version()
        result = promotion.result
        version_id = self._versions.write(
            parent_id=parent.id, save_delta=result.delta.save, save_state=result.state.save,
            facts=promotion.facts,
            manifest={"job_id": promotion.job.id, "policy_digest": promotion.policy_digest,
                      "report": promotion.report, "engine": result.delta.metadata},
        )
        failpoint("worker.version_written")
        version = self._store.promote(
            job_id=promotion.job.id, version_id=version_id, parent_id=parent.id,
            policy_digest=promotion.policy_digest, report=promotion.report,
            applied=promotion.applied, left_out={},
        )
        failpoint("worker.promoted")
        self._models.promote(result.delta, version_id=version.id)  # the worker has it
        self._engine.remember(result, StateFile(self._versions.engine_state_path(version.id)))
        self._chain.append(version.id, result.delta)
        self._executor.follow(self._chain.steps)
        self._publish(LiveChanged(LiveEvent.PROMOTED, version, parent,
                                  reason=f"promoted job {promotion.job.id}"))
        return version

    def rollback(self, *, to_version_id: str, trigger: str, reason: str,
                 requeue: bool) -> list[str]:
        """Make ``to_version_id`` (an ancestor) live and rebuild the models and engine
        state exactly; the ids of the versions undone, newest first."""
        previous = self._store.live_version()
        failpoint("monitor.before_rollback")
        undone = self._store.rollback(to_version_id=to_version_id, reason=reason,
                                      requeue=requeue)
        failpoint("monitor.rolled_back")
        live = self._store.live_version()
        self._rebuild(live)
        log.warning("rolled back %s to %s (%s): %s", undone.rolled_back, live.id, trigger,
                    reason)
        self._publish(LiveChanged(LiveEvent.ROLLED_BACK, live, previous, trigger=trigger,
                                  reason=reason, rolled_back=undone.rolled_back,
                                  quarantined=undone.quarantined))
        return undone.rolled_back

    def _rebuild(self, live: Version) -> None:
        lineage = self._store.lineage(version_id=live.id)
        chain = DeltaChain()

        def read_and_followed() -> Iterator[ModelDelta]:
            for version in lineage:
                delta = ModelDelta.load(self._versions.delta_path(version.id))
                chain.append(version.id, delta)
                yield delta

        self._models.rebuild(read_and_followed(), version_id=live.id)
        self._chain = chain  # only once the models carry all of it
        self._executor.follow(self._chain.steps)
        self._engine.restore([StateFile(self._versions.engine_state_path(v.id))
                              for v in lineage])

    def _publish(self, change: LiveChanged) -> LiveChanged:
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # the pointer has moved; one listener must not stop the rest
                log.exception("a listener of the live version failed on %s",
                              change.event.value)
        return change
