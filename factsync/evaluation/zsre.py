"""Reading ZsRE records (MEND's question-answering split) into evaluation cases.

A record asks a question about its subject (``src``; ``rephrase`` asks it in other
words) and the edit makes ``alt`` its answer, replacing ``pred``, the answer the dataset
records. The neighbourhood is one unrelated Natural Questions prompt whose object is
``loc_ans``: the record's ``neighborhood_samples`` give it as subject and template, and
it reads ``loc`` followed by ``"?"``, the prompt MEMIT scores ZsRE specificity on.

MEMIT edits towards ``answers[0]`` against an ``<|endoftext|>`` placeholder; here the new
object is ``alt`` and the old one ``pred``, so that success (new object against old)
compares two real answers. A record whose ``alt`` is empty cannot be an edit: it is
skipped, and the skipped records are logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from factsync.editing.requests import EditRequest
from factsync.evaluation.cases import EvalCase, read_records

SHARED_ZSRE = Path("zsre") / "zsre-dev-1000.json"

log = logging.getLogger(__name__)


def load_zsre(path: Path, *, limit: int | None = None) -> list[EvalCase]:
    """Read up to ``limit`` cases from a ZsRE json file; a case's id is its record's index.

    Raises ``ValueError`` naming the record and field when a record is malformed.
    """
    records = read_records(path, "ZsRE")
    cases: list[EvalCase] = []
    skipped: list[int] = []
    for index, record in enumerate(records):
        if limit is not None and len(cases) >= limit:
            break
        try:
            case = _case(index, record)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: record {index} is malformed ({exc!r})") from exc
        if case is None:
            skipped.append(index)
        else:
            cases.append(case)
    if skipped:
        log.warning("%s: skipped %d records with an empty alt (no new answer): %s",
                    path, len(skipped), ", ".join(map(str, skipped)))
    return cases


def _case(index: int, record: Any) -> EvalCase | None:
    """The case of one record, ``None`` when it has no new answer."""
    subject, src = _text(record, "subject"), _text(record, "src")
    if subject not in src:
        raise ValueError(f"src {src!r} does not contain the subject {subject!r}")
    if "{" in src or "}" in src:
        raise ValueError(f"src {src!r} has braces, which a prompt template cannot hold")
    alt = record["alt"]
    if not isinstance(alt, str):
        raise TypeError(f"alt must be a string, got {alt!r}")
    if not alt.strip():
        return None
    samples = tuple((s["subject"], s["prompt"]) for s in record["neighborhood_samples"])
    return EvalCase(
        case_id=index,
        request=EditRequest(
            subject=subject,
            template=src.replace(subject, "{}", 1),
            new_object=alt,
            old_object=_text(record, "pred"),
        ),
        paraphrases=(_text(record, "rephrase"),),
        neighbourhood=samples,
        neighbourhood_objects=(_text(record, "loc_ans"),) * len(samples),
    )


def _text(record: Any, key: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    return value
