"""``ModelState``: the worker's and the served model rebuilt from the base plus a chain."""

from __future__ import annotations

import pytest

from factsync.editing.delta import DeltaError
from factsync.jobs.model_state import ModelState


def test_a_rebuild_gives_both_models_the_base_plus_the_chain(tiny_loaded, random_delta):
    models = ModelState(tiny_loaded())
    base = models.digest()
    chain = [random_delta(models.work, [1], seed=1), random_delta(models.work, [1, 2], seed=2)]
    models.rebuild(iter(chain), version_id="v2")
    assert models.digest() == models.digest(serving=True) != base
    with models.serving_at("v2") as served:
        assert served is not None
    models.rebuild([], version_id="base")
    assert models.digest() == models.digest(serving=True) == base


def test_a_rebuild_that_fails_midway_leaves_both_models_on_their_version(tiny_loaded,
                                                                         random_delta):
    models = ModelState(tiny_loaded())
    models.rebuild([random_delta(models.work, [1], seed=1)], version_id="v1")
    before = models.digest()

    def damaged_second_file():
        yield random_delta(models.work, [1], seed=2)
        raise DeltaError("cannot read delta file v2/delta.safetensors")

    with pytest.raises(DeltaError, match="cannot read"):
        models.rebuild(damaged_second_file(), version_id="v2")
    assert models.digest() == models.digest(serving=True) == before
    with models.serving_at("v1") as served:
        assert served is not None
