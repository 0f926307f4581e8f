"""The fluency texts read after every job of a ``bench lifelong`` stream.

A checkpoint every few hundred facts says how much fluency the stream has lost so far,
not which jobs lost it. After each job the fluency texts are read once more (one pass:
seconds, against a minute or more of editing per job) and their NLL compared with the
unedited model's, split at each text's first scored token (``first_and_later_change``).
The difference between two jobs' readings is what the later job did, so the harm of a
long stream can be traced to the jobs that caused it without editing anything again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from factsync.evaluation.fluency import first_and_later_change, token_nlls
from factsync.models.loading import LoadedModel


@dataclass(frozen=True)
class JobReading:
    """The fluency texts after a job, against the unedited model.

    Attributes:
        facts: facts applied when read.
        first_token: the change of every text's first scored token's NLL, summed (nats).
        later_tokens: the same over every later token.
    """

    facts: int
    first_token: float
    later_tokens: float

    def to_json(self) -> dict:
        """The reading as JSON can hold it (``from_json`` reads it back)."""
        return {"facts": self.facts, "first_token_nll_change": self.first_token,
                "later_tokens_nll_change": self.later_tokens}

    @classmethod
    def from_json(cls, saved: dict) -> JobReading:
        """The reading ``to_json`` wrote."""
        return cls(saved["facts"], saved["first_token_nll_change"],
                   saved["later_tokens_nll_change"])


class JobFluency:
    """Reads ``texts`` on a model against the model as it was when this was made."""

    def __init__(self, loaded: LoadedModel, texts: list[str]) -> None:
        self._texts = texts
        self._unedited = token_nlls(loaded, texts)

    def read(self, loaded: LoadedModel, facts: int) -> JobReading:
        """The texts on ``loaded`` as it is now, ``facts`` facts having been applied."""
        first, later = first_and_later_change(self._unedited, token_nlls(loaded, self._texts))
        return JobReading(facts, first, later)


def added_by_each(readings: Sequence[JobReading]) -> list[JobReading]:
    """Per reading, what its job added to the reading before it (the first job's against
    the unedited model), with the facts applied after it."""
    added, before = [], JobReading(0, 0.0, 0.0)
    for reading in readings:
        added.append(JobReading(reading.facts, reading.first_token - before.first_token,
                                reading.later_tokens - before.later_tokens))
        before = reading
    return added


def format_job_fluency(readings: Sequence[JobReading], *, costliest: int = 5) -> str:
    """What the jobs added to the fluency texts' NLL: the later tokens' change after each
    job in stream order, then the ``costliest`` jobs by it. Empty without readings."""
    if not readings:
        return ""
    added = added_by_each(readings)
    worst = sorted(added, key=lambda job: job.later_tokens, reverse=True)[:costliest]
    last = readings[-1]
    return "\n".join([
        f"NLL added to the fluency texts after {last.facts} facts: later tokens "
        f"{last.later_tokens:+.1f} nats, first token {last.first_token:+.1f}",
        f"later tokens added by each job, the first to {added[0].facts} facts: "
        + " ".join(f"{job.later_tokens:+.1f}" for job in added),
        "costliest jobs: " + ", ".join(f"to {job.facts} facts {job.later_tokens:+.1f}"
                                       for job in worst),
    ])
