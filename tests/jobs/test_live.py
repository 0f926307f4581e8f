"""``LiveVersion`` on a tiny model: version state follows the live pointer.

AlphaEdit's preserved keys belong to the versions that wrote them, like their weight
deltas: a restart restores exactly what was preserved before it, and a rollback
restores exactly what the version rolled back to had.
"""

from __future__ import annotations

import pytest
import torch

from factsync.durable import save_tensors
from factsync.editing.engine_state import EngineState, EngineStateError, StateFile
from factsync.jobs.live import LiveChanged, LiveEvent


def assert_same(left: tuple, right: tuple) -> None:
    keys_left, *digests_left = left
    keys_right, *digests_right = right
    assert keys_left.keys() == keys_right.keys()
    for layer in keys_left:
        assert torch.allclose(keys_left[layer], keys_right[layer], atol=1e-9), layer
    assert digests_left == digests_right


def test_a_restart_restores_the_preserved_keys_and_weights_of_the_live_version(daemon):
    first = daemon()
    first.live.restore()
    empty = first.snapshot()
    for n in range(len(first.edits)):
        first.promote_edit(n)
    before = first.snapshot()
    assert all(torch.count_nonzero(m) > 0 for m in before[0].values())
    assert before[1] == before[2]  # the worker and the served model agree

    second = daemon()
    assert_same(second.snapshot(), empty)  # a new process starts from the base ...
    change = second.live.restore()
    assert change.event is LiveEvent.STARTED and change.version.seq == 2
    assert_same(second.snapshot(), before)  # ... and restore brings back the live version


def test_a_rollback_restores_what_the_parent_version_had(daemon):
    owner = daemon()
    owner.live.restore()
    parent = owner.promote_edit(0)
    at_parent = owner.snapshot()
    child = owner.promote_edit(1)
    assert owner.store.live_version().id == child.id

    rolled = owner.live.rollback(to_version_id=parent.id, trigger="operator",
                                 reason="test rollback", requeue=False)

    assert rolled == [child.id]
    assert owner.store.live_version().id == parent.id
    assert_same(owner.snapshot(), at_parent)
    assert [e.event for e in owner.events] == [
        LiveEvent.STARTED, LiveEvent.PROMOTED, LiveEvent.PROMOTED, LiveEvent.ROLLED_BACK]
    last = owner.events[-1]
    assert (last.previous.id, last.version.id, last.trigger, last.rolled_back) == (
        child.id, parent.id, "operator", [child.id])
    assert last.quarantined == 1  # the child's fact waits for an operator


def test_a_failing_listener_does_not_stop_the_others_or_the_promotion(daemon):
    owner = daemon()

    def broken(change: LiveChanged) -> None:
        raise RuntimeError("listener bug")

    after: list[LiveEvent] = []
    owner.live.subscribe(broken)
    owner.live.subscribe(lambda change: after.append(change.event))
    version = owner.promote_edit(0)
    assert owner.store.live_version().id == version.id
    assert after == [LiveEvent.PROMOTED]


def test_engine_state_files_round_trip_and_report_damage(tmp_path):
    state = EngineState(keys={2: torch.randn(64, 3), 3: torch.randn(64, 3)},
                        subjects=("Paris", "Paris", "Skype"))
    state.save(tmp_path / "state.safetensors")
    loaded = EngineState.load(tmp_path / "state.safetensors")
    assert loaded.keys.keys() == state.keys.keys()
    assert all(torch.equal(loaded.keys[x], state.keys[x]) for x in state.keys)
    assert loaded.subjects == state.subjects
    assert EngineState.load(tmp_path / "missing.safetensors").keys == {}
    save_tensors(tmp_path / "older.safetensors", {"keys.layer2": state.keys[2]})
    assert EngineState.load(tmp_path / "older.safetensors").subjects == (None,) * 3
    (tmp_path / "damaged.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(EngineStateError, match="cannot read engine state file .*damaged"):
        EngineState.load(tmp_path / "damaged.safetensors")


def test_a_state_file_knows_its_subjects_before_its_keys_are_read(tmp_path):
    state = EngineState(keys={2: torch.randn(64, 2)}, subjects=("Paris", "Skype"))
    state.save(tmp_path / "state.safetensors")
    saved = StateFile(tmp_path / "state.safetensors")
    assert saved.subjects == ("Paris", "Skype")
    assert torch.equal(saved.read().keys[2], state.keys[2])
    assert StateFile(tmp_path / "missing.safetensors").subjects == ()
    save_tensors(tmp_path / "older.safetensors", {"keys.layer2": state.keys[2]})
    assert StateFile(tmp_path / "older.safetensors").subjects == (None, None)
    (tmp_path / "damaged.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(EngineStateError, match="cannot read engine state file .*damaged"):
        StateFile(tmp_path / "damaged.safetensors")
