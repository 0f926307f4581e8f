"""Reading COUNTERFACT records into edit requests and probes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from factsync.editing.requests import EditRequest, Neighbour

SHARED_COUNTERFACT = Path("counterfact") / "counterfact-dev-1000.json"


@dataclass(frozen=True)
class CounterfactCase:
    """One COUNTERFACT record.

    Attributes:
        case_id: the record's id.
        request: the requested rewrite, with its true object as ``old_object``.
        paraphrases: paraphrase prompts of the rewrite.
        neighbourhood: (subject, template) of other subjects whose object is the true
            object; ``template.format(subject)`` is the neighbourhood prompt.
    """

    case_id: int
    request: EditRequest
    paraphrases: tuple[str, ...]
    neighbourhood: tuple[tuple[str, str], ...]


def default_data_dir() -> Path | None:
    """``../shared/data`` beside the working directory's checkout, when it exists."""
    for base in (Path.cwd(), *Path.cwd().parents):
        candidate = base.parent / "shared" / "data"
        if (candidate / SHARED_COUNTERFACT).is_file():
            return candidate
    return None


def load_counterfact(path: Path, *, limit: int | None = None) -> list[CounterfactCase]:
    """Read up to ``limit`` records of a COUNTERFACT json file.

    Raises ``ValueError`` naming the record and field when a record is malformed.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            records = json.load(handle)
    except OSError as exc:
        raise ValueError(f"cannot read COUNTERFACT data {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of records")
    cases = []
    for index, record in enumerate(records[:limit] if limit is not None else records):
        try:
            rewrite = record["requested_rewrite"]
            request = EditRequest(
                subject=rewrite["subject"],
                template=rewrite["prompt"],
                new_object=rewrite["target_new"]["str"],
                old_object=rewrite["target_true"]["str"],
            )
            samples = tuple((s["subject"], s["prompt"]) for s in record["neighborhood_samples"])
            cases.append(
                CounterfactCase(
                    case_id=int(record.get("case_id", index)),
                    request=request,
                    paraphrases=tuple(record["paraphrase_prompts"]),
                    neighbourhood=samples,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: record {index} is malformed ({exc!r})") from exc
    return cases


def with_neighbours(case: CounterfactCase, neighbours: list[tuple[str, str]]) -> EditRequest:
    """The case's request with ``neighbours`` (subject, template) to keep its old object."""
    old = case.request.old_object or ""
    return EditRequest(
        subject=case.request.subject,
        template=case.request.template,
        new_object=case.request.new_object,
        old_object=old,
        neighbours=tuple(Neighbour(subject, template, old) for subject, template in neighbours),
    )
