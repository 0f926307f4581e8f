"""Reading COUNTERFACT records into evaluation cases, and finding the shared data."""

from __future__ import annotations

from pathlib import Path

from factsync.editing.requests import EditRequest
from factsync.evaluation.cases import EvalCase, read_records

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

    The true object is the request's old object and of every neighbourhood prompt.
    Raises ``ValueError`` naming the record and field when a record is malformed.
    """
    records = read_records(path, "COUNTERFACT")
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
                EvalCase(
                    case_id=int(record.get("case_id", index)),
                    request=request,
                    paraphrases=tuple(record["paraphrase_prompts"]),
                    neighbourhood=samples,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: record {index} is malformed ({exc!r})") from exc
    return cases
