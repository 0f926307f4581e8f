"""What lets the work split: parts measured apart combine into the whole's measurement,
and the executor settings refuse what cannot run. No Ray needed."""

from __future__ import annotations

import pytest

from factsync.evaluation.kpis import EditCheck, combine, measure, measure_part
from factsync.executors.build import build_executor
from factsync.executors.local import LocalExecutor
from factsync.executors.ray_fleet import _slice
from factsync.executors.settings import ExecutorSettings
from factsync.typed_yaml import SchemaError, build

CHECKS = [
    EditCheck(change_id=1, relation="r", prompt="The capital of France is", new_object="Rome",
              old_object="Paris", paraphrases=("France's capital city is",),
              held_out=(("The capital of Italy is", "Rome"),)),
    EditCheck(change_id=2, relation="r", prompt="LinkedIn is owned by", new_object="Apple",
              old_object=None),
    EditCheck(change_id=3, relation="s", prompt="Skype was made by", new_object="Google",
              old_object="Microsoft", paraphrases=("The maker of Skype is", "Skype comes from")),
]
RETENTION = [("The capital of Spain is", "Madrid"), ("Rome is in", "Italy"),
             ("Paris is in", "France")]
TEXTS = ["Once upon a time there was a city.", "The capital of France is Paris.",
         "LinkedIn is owned by Microsoft, and so is Skype."]


def test_parts_measured_apart_combine_into_the_whole(tiny_loaded):
    loaded = tiny_loaded()
    whole = measure(loaded, CHECKS, RETENTION, TEXTS)
    parts = [measure_part(loaded, CHECKS[:1], RETENTION[:2], TEXTS[:2]),
             measure_part(loaded, CHECKS[1:], RETENTION[2:], TEXTS[2:]),
             measure_part(loaded, [], [], [])]  # a worker with nothing to do
    combined = combine(parts)
    assert combined.facts == whole.facts
    assert combined.edit_probability == pytest.approx(whole.edit_probability, rel=1e-6)
    assert combined.retention == whole.retention
    assert combined.perplexity == pytest.approx(whole.perplexity, rel=1e-6)


def test_slices_cover_every_item_once_in_order():
    items = list(range(7))
    for parts in (1, 2, 3, 7, 9):
        slices = [_slice(items, i, parts) for i in range(parts)]
        assert [x for s in slices for x in s] == items
        assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_the_local_executor_is_the_default():
    assert isinstance(build_executor(ExecutorSettings(), source="default"), LocalExecutor)


@pytest.mark.parametrize(("section", "error"), [
    ({"type": "spark"}, "executor.type must be one of local, ray"),
    ({"type": "ray", "workers": 0}, "workers must be at least 1"),
    ({"type": "ray", "gpus_per_worker": -1}, "gpus_per_worker must not be negative"),
    ({"type": "ray", "timeout_seconds": 0}, "timeout_seconds must be positive"),
    ({"type": "ray", "nodes": 3}, "nodes"),
])
def test_bad_executor_settings_name_the_key(section, error):
    with pytest.raises(SchemaError, match=error):
        build(ExecutorSettings, section, "executor")
