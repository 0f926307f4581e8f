"""Which applied keys still stand when a lineage writes a subject more than once."""

from __future__ import annotations

import pytest
import torch

from factsync.editing.engine_state import EngineState, standing


def _state(*subjects: str | None) -> EngineState:
    return EngineState(keys={4: torch.randn(8, len(subjects)), 5: torch.randn(8, len(subjects))},
                       subjects=subjects)


def test_a_later_state_supersedes_every_earlier_key_of_its_subjects():
    first, second, third = _state("Paris", "Paris", "Skype"), _state("Paris"), _state("Rome")
    kept = standing([first, second, third])
    assert [s.subjects for s in kept] == [("Skype",), ("Paris",), ("Rome",)]
    assert torch.equal(kept[0].keys[4], first.keys[4][:, [2]])
    assert torch.equal(kept[1].keys[5], second.keys[5])


def test_keys_of_unknown_subjects_always_stand():
    older = _state(None, None)
    assert standing([older, _state("Paris")])[0].subjects == (None, None)
    assert older.by_subject() == {}


def test_by_subject_gathers_a_subjects_columns_at_every_layer():
    state = _state("Paris", "Skype", "Paris")
    grouped = state.by_subject()
    assert set(grouped) == {"Paris", "Skype"}
    assert torch.equal(grouped["Paris"][4], state.keys[4][:, [0, 2]])
    assert grouped["Skype"][5].shape == (8, 1)


def test_keys_and_subjects_must_agree():
    with pytest.raises(ValueError, match="layer 4 has 2 keys for 1 subjects"):
        EngineState(keys={4: torch.randn(8, 2)}, subjects=("Paris",))
