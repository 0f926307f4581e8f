"""``stated_facts``: which facts a model gives as its greedy answer."""

from __future__ import annotations

import pytest

from factsync.models.loading import load_model
from factsync.models.scoring import stated_facts


def test_no_facts_states_none(tiny_loaded):
    assert stated_facts(tiny_loaded(), []) == []


@pytest.mark.real_model
def test_the_facts_kept_are_those_whose_object_the_model_answers():
    loaded = load_model("default", device="cpu")
    paris = ("The capital of {} is", "France", "Paris")
    berlin = ("The capital of {} is", "France", "Berlin")
    ottawa = ("The capital of {} is", "Canada", "Ottawa")
    assert stated_facts(loaded, [berlin, paris, ottawa, berlin]) == [paris, ottawa]
