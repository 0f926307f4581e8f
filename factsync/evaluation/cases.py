"""The benchmark case every dataset loads into, and reading a file of records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factsync.editing.requests import EditRequest, Neighbour


@dataclass(frozen=True)
class EvalCase:
    """One benchmark record, whichever dataset it came from.

    Attributes:
        case_id: the record's id.
        request: the requested edit, with ``old_object`` set: the object the edit
            replaces (COUNTERFACT: the true object; ZsRE: the dataset's ``pred``, as the
            unedited model's own answer is not known when records are read).
        paraphrases: full prompts that ask for the same fact in other words.
        neighbourhood: (subject, template) of facts the edit must not change;
            ``template.format(subject)`` is the prompt.
        neighbourhood_objects: the object of each neighbourhood prompt (ZsRE: the
            ``loc_ans`` answer), or ``None`` when every one is ``request.old_object``
            (COUNTERFACT: other subjects with the same true object).
        relation: the fact's relation id where the dataset names it (COUNTERFACT's
            ``relation_id``, e.g. ``"P37"``), else ``None``.
    """

    case_id: int
    request: EditRequest
    paraphrases: tuple[str, ...]
    neighbourhood: tuple[tuple[str, str], ...]
    neighbourhood_objects: tuple[str, ...] | None = None
    relation: str | None = None

    def __post_init__(self) -> None:
        if self.request.old_object is None:
            raise ValueError(f"case {self.case_id} needs the old object of its request")
        for _, template in self.neighbourhood:
            if "{}" not in template:
                raise ValueError(f"neighbourhood template {template!r} has no '{{}}'")
        objects = self.neighbourhood_objects
        if objects is not None and len(objects) != len(self.neighbourhood):
            raise ValueError(
                f"case {self.case_id} has {len(self.neighbourhood)} neighbourhood prompts "
                f"but {len(objects)} objects for them"
            )

    def neighbourhood_facts(self) -> tuple[Neighbour, ...]:
        """Each neighbourhood prompt with the object it must keep."""
        objects = self.neighbourhood_objects
        if objects is None:
            objects = (self.request.old_object or "",) * len(self.neighbourhood)
        return tuple(
            Neighbour(subject, template, obj)
            for (subject, template), obj in zip(self.neighbourhood, objects, strict=True)
        )


def read_records(path: Path, what: str) -> list[Any]:
    """The JSON list of records in ``path``; ``what`` names the dataset in errors."""
    try:
        with open(path, encoding="utf-8") as handle:
            records = json.load(handle)
    except OSError as exc:
        raise ValueError(f"cannot read {what} data {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of {what} records")
    return records
