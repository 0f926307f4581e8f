"""Facts of a stream whose edit took and later wore off, found to be edited again.

Later jobs move the weights an earlier fact's edit wrote: over 500 ZsRE facts the
answers' token accuracy fell from 0.906 at 250 facts to 0.824, though each fact left IME
only once its answer led. IME cannot see that; it only checks the facts of its own job.
``WornFacts`` checks a few applied facts before each job, by the took rule their edit
had to pass, and names those that no longer pass it, so the job can state them again.

A job that writes a subject lets go of the keys its earlier facts wrote (they share the
subject's key), so stating a worn fact alone wears its subject's other facts. On the
real model, "The capital of France is Rome" wore "The largest city in France is Lyon"
off, and stating Lyon again alone then wore Rome off. The subject's other standing
facts are therefore stated in the same job.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from factsync.editing.outcomes import TookRule, edit_outcomes
from factsync.editing.requests import EditRequest
from factsync.models.loading import LoadedModel


@dataclass(frozen=True)
class Restated:
    """The applied facts (from 0) a job states again.

    Attributes:
        worn: those whose edit took and no longer passes the took rule.
        siblings: standing facts of a subject the job writes (new or worn facts'), whose
            keys the job would otherwise let go.
    """

    worn: list[int]
    siblings: list[int]

    @property
    def facts(self) -> list[int]:
        """Every fact stated again, in stream order."""
        return sorted(self.worn + self.siblings)


class WornFacts:
    """Which applied facts of ``requests`` (a stream, applied in order) wore off.

    Before the job that applies the stream from fact ``applied`` on (counted from 0, in
    jobs of ``batch``), ``sample`` facts of those applied are checked: a window that
    starts where the previous job's ended and wraps round to the first fact, so each
    applied fact is checked every ``applied / sample`` jobs or so. A fact whose latest
    edit did not take is not checked (``untaken``): stating it again would only try what
    failed already. Nor is a fact written again later in the stream (same subject and
    prompt): its later object stands.
    """

    def __init__(self, requests: Sequence[EditRequest], contexts: list[str], *, batch: int,
                 sample: int, rule: TookRule = TookRule.WINS, phrasings: bool = False,
                 untaken: Sequence[int] = ()) -> None:
        for name, value in (("batch", batch), ("sample", sample)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self._batch = batch
        self._requests = list(requests)
        self._contexts = contexts
        self._sample = sample
        self._rule = rule
        self._phrasings = phrasings
        self._untaken = set(untaken)
        # Per fact, the place of the next fact that writes its subject and prompt again.
        self._rewritten_at = [len(self._requests)] * len(self._requests)
        latest: dict[tuple[str, str], int] = {}
        for index, request in enumerate(self._requests):
            key = (request.subject, request.template)
            if key in latest:
                self._rewritten_at[latest[key]] = index
            latest[key] = index
        self._by_subject: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(self._requests):
            self._by_subject[request.subject].append(index)

    @property
    def untaken(self) -> tuple[int, ...]:
        """The facts (from 0) whose latest edit did not take, in order."""
        return tuple(sorted(self._untaken))

    def checked(self, applied: int) -> list[int]:
        """The facts (from 0) checked before the job that starts at fact ``applied``."""
        if applied == 0:
            return []
        # The window starts where the last one ended, round the facts applied so far.
        cursor = sum(min(self._sample, before) for before in range(0, applied, self._batch))
        window = {(cursor + offset) % applied for offset in range(min(self._sample, applied))}
        return [index for index in sorted(window)
                if index not in self._untaken and self._rewritten_at[index] >= applied]

    def worn(self, loaded: LoadedModel, applied: int) -> list[int]:
        """The facts checked before the job that starts at fact ``applied`` that no longer
        pass the took rule on the model as it is."""
        checked = self.checked(applied)
        if not checked:
            return []
        outcomes = edit_outcomes(loaded, [self._requests[i] for i in checked], self._contexts,
                                 self._rule, self._phrasings)
        return [index for index, took in zip(checked, outcomes.took, strict=True) if not took]

    def restated(self, loaded: LoadedModel, applied: int, job_end: int) -> Restated:
        """What the job of facts ``applied`` to ``job_end`` (counted from 0, end left
        out) states again: the worn facts ``worn`` finds, and the standing facts of the
        subjects it writes, unless that job writes the same prompt again."""
        worn = self.worn(loaded, applied)
        written = [*range(applied, job_end), *worn]
        subjects = dict.fromkeys(self._requests[index].subject for index in written)
        siblings = [index for subject in subjects for index in self._by_subject[subject]
                    if index < applied and index not in worn and index not in self._untaken
                    and self._rewritten_at[index] >= job_end]
        return Restated(worn, sorted(siblings))

    def note_edited(self, loaded: LoadedModel, indices: Sequence[int]) -> None:
        """Record whether the edits of the facts ``indices``, just applied, took."""
        if not indices:
            return
        outcomes = edit_outcomes(loaded, [self._requests[i] for i in indices], self._contexts,
                                 self._rule, self._phrasings)
        for index, took in zip(indices, outcomes.took, strict=True):
            if took:
                self._untaken.discard(index)
            else:
                self._untaken.add(index)
