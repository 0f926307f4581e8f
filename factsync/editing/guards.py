"""Which guard facts an engine holds in place (``EngineSettings.guard_facts``)."""

from __future__ import annotations

from factsync.editing.engine import EngineSettings
from factsync.facts.catalog import RelationCatalog
from factsync.facts.guards import GUARD_FACTS
from factsync.models.loading import LoadedModel
from factsync.models.scoring import stated_facts


def engine_guards(loaded: LoadedModel, settings: EngineSettings) -> list[tuple[str, str]]:
    """The (template, subject) of the built-in guard facts whose object ``loaded``
    gives as its greedy answer, when ``settings`` holds guards; else none."""
    if not settings.guard_facts:
        return []
    facts = RelationCatalog.built_in().templated(GUARD_FACTS)
    return [(template, subject) for template, subject, _ in stated_facts(loaded, facts)]
