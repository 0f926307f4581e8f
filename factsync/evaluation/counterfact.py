"""Reading COUNTERFACT records into evaluation cases, and finding the shared data."""

from __future__ import annotations

from pathlib import Path

from factsync.editing.requests import EditRequest
from factsync.evaluation.cases import EvalCase, read_records
from factsync.facts.catalog import RelationCatalog

SHARED_COUNTERFACT = Path("counterfact") / "counterfact-dev-1000.json"


def default_data_dir(holding: Path = SHARED_COUNTERFACT) -> Path | None:
    """``../shared/data`` beside the working directory's checkout, when it holds ``holding``.

    ``holding`` is a file's path relative to that directory; the working directory and
    each of its parents are tried in turn.
    """
    for base in (Path.cwd(), *Path.cwd().parents):
        candidate = base.parent / "shared" / "data"
        if (candidate / holding).is_file():
            return candidate
    return None


def load_counterfact(path: Path, *, limit: int | None = None) -> list[EvalCase]:
    """Read up to ``limit`` records of a COUNTERFACT json file.

    The true object is the request's old object and of every neighbourhood prompt. Each
    request carries the built-in catalog's training phrasings of its relation (none for
    a relation the catalog lacks), and a paraphrase prompt that ends with one of them is
    not scored: generalisation is measured on wordings an edit was not trained on. (No
    dev record has such a paraphrase.)
    Raises ``ValueError`` naming the record and field when a record is malformed.
    """
    records = read_records(path, "COUNTERFACT")
    catalog = RelationCatalog.built_in()
    cases = []
    for index, record in enumerate(records[:limit] if limit is not None else records):
        try:
            rewrite = record["requested_rewrite"]
            relation = catalog.resolve(rewrite.get("relation_id", ""))
            request = EditRequest(
                subject=rewrite["subject"],
                template=rewrite["prompt"],
                new_object=rewrite["target_new"]["str"],
                old_object=rewrite["target_true"]["str"],
                phrasings=relation.phrasings if relation is not None else (),
            )
            trained = tuple(p.format(request.subject) for p in request.phrasings)
            samples = tuple((s["subject"], s["prompt"]) for s in record["neighborhood_samples"])
            cases.append(
                EvalCase(
                    case_id=int(record.get("case_id", index)),
                    request=request,
                    paraphrases=tuple(p for p in record["paraphrase_prompts"]
                                      if not p.endswith(trained)),
                    neighbourhood=samples,
                    relation=rewrite.get("relation_id") or None,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: record {index} is malformed ({exc!r})") from exc
    return cases
