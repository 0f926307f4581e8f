"""What the engine is asked to do: edit requests and their neighbours."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Neighbour:
    """A fact that must not move when an edit is made (NME).

    Attributes:
        subject: the neighbour's subject, e.g. ``"Skype"``.
        template: prompt with ``{}`` for the subject, e.g. ``"{} is owned by"``.
        object: what the model must keep predicting after the prompt.
    """

    subject: str
    template: str
    object: str


@dataclass(frozen=True)
class EditRequest:
    """One fact to write into the model.

    Attributes:
        subject: the subject as it appears in prompts, e.g. ``"LinkedIn"``.
        template: prompt with ``{}`` for the subject, e.g. ``"{}, by"``.
        new_object: the object the model must predict after the edit.
        old_object: what it predicted before, when known (used for scoring only).
        neighbours: facts that must keep their objects; they join the target-vector
            optimisation when neighbour assistance (NME) is on.
        phrasings: other templates for the same fact, e.g. ``"{} is a product of"``;
            the target-vector optimisation also trains on them when
            ``target.train_phrasings`` is on.
    """

    subject: str
    template: str
    new_object: str
    old_object: str | None = None
    neighbours: tuple[Neighbour, ...] = ()
    phrasings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for template in (self.template, *self.phrasings):
            if "{}" not in template:
                raise ValueError(f"template {template!r} has no '{{}}' for the subject")
        if not self.subject.strip():
            raise ValueError("subject is empty")
        if not self.new_object.strip():
            raise ValueError(f"new object for {self.subject!r} is empty")

    @property
    def prompt(self) -> str:
        """The edit prompt with the subject filled in."""
        return self.template.format(self.subject)

    def reverted(self) -> EditRequest:
        """The request that changes the fact back: the new and old objects swapped, the
        same neighbours. Raises ``ValueError`` when the old object is not known."""
        if self.old_object is None:
            raise ValueError(f"the fact about {self.subject!r} has no old object to go back to")
        return replace(self, new_object=self.old_object, old_object=self.new_object)
