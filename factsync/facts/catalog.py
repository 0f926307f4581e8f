"""The relation catalog: how to ask a model about each kind of fact.

Relation ids are the Wikidata property ids that COUNTERFACT uses; each also has a
readable alias. Templates put ``{}`` where the subject goes and end where the object
starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Relation:
    """How to prompt for one relation.

    Attributes:
        id: Wikidata property id, e.g. ``"P36"``.
        alias: readable name accepted in feeds, e.g. ``"capital"``.
        template: the edit prompt, e.g. ``"The capital of {} is"``.
        paraphrases: other prompts for the same fact, used to score generalisation.
        question: the fact as a question, e.g. ``"What is the capital of {}?"``.
        phrasings: other prompts for the same fact that an edit may be trained on
            (``target.train_phrasings``). They are kept apart from ``paraphrases`` so
            that generalisation is never scored on a wording the edit was trained on.
    """

    id: str
    alias: str
    template: str
    paraphrases: tuple[str, ...] = ()
    question: str = ""
    phrasings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for prompt in (self.template, *self.paraphrases, *self.phrasings):
            if prompt.count("{}") != 1:
                raise ValueError(f"relation {self.id}: prompt {prompt!r} needs exactly one '{{}}'")
        scored = {self.template, *self.paraphrases}
        for phrasing in self.phrasings:
            if phrasing in scored:
                raise ValueError(f"relation {self.id}: phrasing {phrasing!r} is also a "
                                 "scored prompt; phrasings must differ from the template "
                                 "and the paraphrases")


_BUILT_IN = [
    Relation("P17", "country", "{} is located in the country of",
             ("{} can be found in the country of", "The country {} is in is"),
             "In which country is {}?",
             ("{}, a place in the country of", "{} lies within the borders of")),
    Relation("P19", "place_of_birth", "{} was born in",
             ("The birthplace of {} is", "{} came into the world in"),
             "Where was {} born?",
             ("The place of birth of {} is", "{} is a native of")),
    Relation("P20", "place_of_death", "{} died in",
             ("The place where {} died is", "{} passed away in"),
             "Where did {} die?",
             ("The place of death of {} is", "{} lost their life in")),
    Relation("P27", "citizenship", "{} is a citizen of",
             ("{} holds the citizenship of", "The nationality of {} is that of"),
             "Which country is {} a citizen of?",
             ("{} has the citizenship of", "{} is a national of")),
    Relation("P30", "continent", "{} is located on the continent of",
             ("{} is part of the continent of", "The continent of {} is"),
             "On which continent is {}?",
             ("{} lies on the continent of", "{} sits on the continent of")),
    Relation("P36", "capital", "The capital of {} is",
             ("{}'s capital city is", "The capital city of {} is"),
             "What is the capital of {}?",
             ("The seat of government of {} is", "{} is governed from")),
    Relation("P37", "official_language", "The official language of {} is",
             ("In {}, the official language is", "{} has the official language"),
             "What is the official language of {}?",
             ("The language officially used in {} is", "{}'s official language is")),
    Relation("P39", "position_held", "{} holds the position of",
             ("{} served in the position of", "The office held by {} is"),
             "Which position does {} hold?",
             ("{} was appointed to the position of", "The office of {} is")),
    Relation("P101", "field_of_work", "{} works in the field of",
             ("The field of work of {} is", "{} is an expert in"),
             "What field does {} work in?",
             ("{} specialises in", "{}'s field of work is")),
    Relation("P103", "native_language", "The native language of {} is",
             ("{} grew up speaking", "The first language of {} is"),
             "What is the native language of {}?",
             ("{}'s mother tongue is", "{}'s native language is")),
    Relation("P106", "occupation", "The occupation of {} is",
             ("{} works as a", "By profession, {} is a"),
             "What is the occupation of {}?",
             ("{} has the profession of a", "{} earns a living as a")),
    Relation("P108", "employer", "{} is employed by",
             ("{} works for", "The employer of {} is"),
             "Who employs {}?",
             ("{} is an employee of", "{}'s employer is")),
    Relation("P127", "owner", "{} is owned by",
             ("The owner of {} is", "{} belongs to"),
             "Who owns {}?",
             ("{} is a property of", "{}'s owner is")),
    Relation("P131", "located_in", "{} is located in",
             ("{} lies in", "{} is situated in"),
             "Where is {} located?",
             ("{} is a place in", "{}'s location is")),
    Relation("P136", "genre", "{} plays the music genre of",
             ("The genre of {} is", "{} is known for the genre"),
             "What genre does {} play?",
             ("{} performs the music genre of", "{}'s music genre is")),
    Relation("P138", "named_after", "{} is named after",
             ("{} takes its name from", "The name of {} comes from"),
             "Who or what is {} named after?",
             ("{} was named after", "{}'s name honours")),
    Relation("P140", "religion", "{} follows the religion of",
             ("The religion of {} is", "{} is an adherent of"),
             "Which religion does {} follow?",
             ("{} practises the religion of", "{}'s religion is")),
    Relation("P159", "headquarters", "The headquarters of {} is in",
             ("{} is headquartered in", "{} has its head office in"),
             "Where is {} headquartered?",
             ("{} has its main office in", "The head office of {} is in")),
    Relation("P176", "manufacturer", "{} is produced by",
             ("{} is made by", "The manufacturer of {} is"),
             "Who manufactures {}?",
             ("{} is manufactured by", "{}'s manufacturer is")),
    Relation("P178", "developer", "{} was developed by",
             ("{} is a product of", "The developer of {} is"),
             "Who developed {}?",
             ("{} is the work of", "{}'s developer is")),
    Relation("P190", "twin_city", "The twin city of {} is",
             ("{} is twinned with", "{} has a sister city,"),
             "What is the twin city of {}?",
             ("{}'s twin city is", "{} is a twin town of")),
    Relation("P264", "record_label", "{} is signed to the record label",
             ("The record label of {} is", "{} releases music through"),
             "Which record label is {} signed to?",
             ("{} is signed to", "{} puts out records on")),
    Relation("P276", "location", "{} is located in",
             ("{} can be found in", "The location of {} is"),
             "Where is {}?",
             ("{} is found in", "{}'s location is")),
    Relation("P364", "original_language", "The original language of {} is",
             ("{} was originally made in", "{} was first produced in the language"),
             "What is the original language of {}?",
             ("{} was originally produced in", "{}'s original language is")),
    Relation("P407", "language_of_work", "{} is written in",
             ("The language of {} is", "{} was published in the language"),
             "In which language is {} written?",
             ("The text of {} is in", "{}'s language is")),
    Relation("P413", "position_played", "{} plays in the position of",
             ("On the field, {} plays as", "The position {} plays is"),
             "Which position does {} play?",
             ("{}'s playing position is", "{} is a player in the position of")),
    Relation("P449", "original_network", "{} was first aired on",
             ("{} premiered on", "The original network of {} is"),
             "On which network did {} first air?",
             ("{} was originally broadcast on", "{}'s original network is")),
    Relation("P463", "member_of", "{} is a member of",
             ("{} belongs to the organisation", "{} is affiliated with"),
             "Which organisation is {} a member of?",
             ("{} has membership in", "{} is one of the members of")),
    Relation("P495", "country_of_origin", "{} originated in the country of",
             ("{} comes from the country of", "The country of origin of {} is"),
             "Which country does {} come from?",
             ("{} has its origins in", "{}'s country of origin is")),
    Relation("P641", "sport", "{} plays the sport of",
             ("The sport {} plays is", "{} is a professional player of"),
             "Which sport does {} play?",
             ("{} competes in the sport of", "{}'s sport is")),
    Relation("P740", "formation_location", "{} was formed in",
             ("{} was founded in", "The place where {} started is"),
             "Where was {} formed?",
             ("{} was established in", "{}'s place of formation is")),
    Relation("P937", "work_location", "{} worked in the city of",
             ("The city where {} worked is", "{} was employed in the city of"),
             "In which city did {} work?",
             ("{} had a job in the city of", "{}'s place of work was")),
    Relation("P1303", "instrument", "{} plays the instrument",
             ("The instrument {} plays is the", "{} performs on the"),
             "Which instrument does {} play?",
             ("{} is a player of the", "{}'s instrument is the")),
    Relation("P1412", "language_spoken", "{} speaks the language",
             ("{} writes in the language", "The language used by {} is"),
             "Which language does {} speak?",
             ("{} is a speaker of", "{}'s language is")),
]


class RelationCatalog:
    """Relations by id and by alias (case-insensitive)."""

    def __init__(self, relations: Iterable[Relation]) -> None:
        self._by_name: dict[str, Relation] = {}
        self._relations: dict[str, Relation] = {}
        for relation in relations:
            self.add(relation)

    @classmethod
    def built_in(cls, extra: Mapping[str, Mapping[str, Any]] | None = None) -> RelationCatalog:
        """The shipped catalog plus ``extra`` relations from configuration.

        ``extra`` maps a relation id to ``{template, paraphrases, question, alias,
        phrasings}``; an id that exists replaces the shipped entry.
        """
        catalog = cls(_BUILT_IN)
        for relation_id, entry in (extra or {}).items():
            catalog.add(
                Relation(
                    id=relation_id,
                    alias=entry.get("alias", relation_id),
                    template=entry["template"],
                    paraphrases=tuple(entry.get("paraphrases", ())),
                    question=entry.get("question", ""),
                    phrasings=tuple(entry.get("phrasings", ())),
                )
            )
        return catalog

    def add(self, relation: Relation) -> None:
        """Add ``relation``, replacing one with the same id."""
        old = self._relations.pop(relation.id, None)
        if old is not None:
            self._by_name.pop(old.id.lower(), None)
            self._by_name.pop(old.alias.lower(), None)
        self._relations[relation.id] = relation
        self._by_name[relation.alias.lower()] = relation
        self._by_name[relation.id.lower()] = relation

    def resolve(self, name: str) -> Relation | None:
        """The relation with id or alias ``name``, or ``None``."""
        return self._by_name.get(name.strip().lower())

    def templated(self, facts: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """(subject, relation, object) ``facts`` as (template, subject, object), in order,
        leaving out those whose relation the catalog does not know."""
        resolved = ((self.resolve(relation), subject, obj) for subject, relation, obj in facts)
        return [(relation.template, subject, obj)
                for relation, subject, obj in resolved if relation is not None]

    def __iter__(self):  # noqa: ANN204
        return iter(self._relations.values())

    def __len__(self) -> int:
        return len(self._relations)
