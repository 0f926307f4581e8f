"""Which guard facts an engine holds in place (``EngineSettings.guard_facts``)."""

from __future__ import annotations

from factsync.editing.engine import EngineSettings
from factsync.facts.catalog import RelationCatalog
from factsync.facts.guards import GUARD_FACTS
from factsync.models.loading import LoadedModel
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids


def engine_guards(loaded: LoadedModel, settings: EngineSettings) -> list[tuple[str, str]]:
    """The (template, subject) of the built-in guard facts whose object ``loaded``
    gives as its greedy answer, when ``settings`` holds guards; else none."""
    if not settings.guard_facts:
        return []
    catalog = RelationCatalog.built_in()
    facts = [(catalog.resolve(relation).template, subject, obj)
             for subject, relation, obj in GUARD_FACTS]
    scores = score_targets(loaded, [PromptSpec(template, subject, object_ids(loaded, obj))
                                    for template, subject, obj in facts])
    return [(template, subject) for (template, subject, _), score
            in zip(facts, scores, strict=True) if score.exact]
