"""Where on the fluency texts a delta's perplexity harm sits, token by token.

A perplexity ratio sums the change of every scored token's NLL. When a few tokens carry
most of that sum, the ratio says more about those tokens than about fluency at large:
this module names them and says how much of the change they carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from factsync.evaluation.fluency import ScoredText
from factsync.models.loading import LoadedModel

CONTEXT_TOKENS = 6


@dataclass(frozen=True)
class TokenChange:
    """One scored token of a fluency text, before and after a delta.

    Attributes:
        text: the text's index among the fluency texts.
        token: the token as text.
        context: the tokens just before it, as text.
        before: its NLL (nats) on the unedited model.
        after: its NLL with the delta applied.
    """

    text: int
    token: str
    context: str
    before: float
    after: float

    @property
    def change(self) -> float:
        """How much the delta raised the token's NLL (nats; negative: lowered it)."""
        return self.after - self.before


def token_changes(loaded: LoadedModel, before: Sequence[ScoredText],
                  after: Sequence[ScoredText]) -> list[TokenChange]:
    """Every scored token of the same texts before and after a delta (each the texts'
    ``token_nlls``), largest rise first; ``loaded``'s tokenizer names the tokens."""
    decode = loaded.tokenizer.decode
    changes = []
    for index, (old, new) in enumerate(zip(before, after, strict=True)):
        for offset, (was, now) in enumerate(zip(old.nlls.tolist(), new.nlls.tolist(),
                                                strict=True)):
            position = old.first + offset
            context = old.ids[max(old.first, position - CONTEXT_TOKENS) : position]
            changes.append(TokenChange(index, decode([old.ids[position]]), decode(context),
                                       was, now))
    return sorted(changes, key=lambda c: c.change, reverse=True)


def share_carried(changes: Sequence[TokenChange], counts: Sequence[int]) -> dict[int, float]:
    """For each count k, the share of the net NLL change that the k tokens whose NLL rose
    most carry (above 1 when the other tokens' changes net out below zero). Raises
    ``ValueError`` when the net change is zero."""
    ranked = sorted((c.change for c in changes), reverse=True)
    total = sum(ranked)
    if total == 0:
        raise ValueError("the delta changed no token's NLL: no share to give")
    return {k: sum(ranked[:k]) / total for k in counts}


def token_damage_json(changes: Sequence[TokenChange], counts: Sequence[int],
                      shown: int) -> dict:
    """The net change, the shares the top tokens carry and the ``shown`` largest rises."""
    return {"tokens": len(changes), "net_nll_change": sum(c.change for c in changes),
            "share_carried": {str(k): v for k, v in share_carried(changes, counts).items()},
            "largest": [asdict(c) | {"change": c.change} for c in changes[:shown]]}


def format_token_damage(changes: Sequence[TokenChange], counts: Sequence[int],
                        shown: int) -> str:
    """A line on how concentrated the change is, then the ``shown`` largest rises."""
    shares = share_carried(changes, counts)
    net = sum(c.change for c in changes)
    carried = ", ".join(f"{k}: {share:.0%}" for k, share in shares.items())
    lines = [f"{len(changes)} scored tokens, net NLL change {net:+.1f} nats; "
             f"share of it carried by the tokens that rose most: {carried}",
             "change | before | after | text | token | context",
             "------ | ------ | ----- | ---- | ----- | -------"]
    lines += [f"{c.change:+.2f} | {c.before:.2f} | {c.after:.2f} | {c.text} | "
              f"{c.token!r} | {c.context!r}" for c in changes[:shown]]
    return "\n".join(lines)
