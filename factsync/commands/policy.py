"""``factsync policy check``: validate a policy file and explain it."""

from __future__ import annotations

import argparse
from pathlib import Path

from factsync.editing.outcomes import TookRule
from factsync.editing.spread import LeadHold
from factsync.policies.schema import EditingPolicy, OnFailure, OnRollback, Policy, load_policy


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``policy`` command group."""
    parser = commands.add_parser("policy", help="validate and explain policy files")
    sub = parser.add_subparsers(title="policy commands", metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="validate a policy file and explain what it does",
        description="Load a policy file, report the first wrong key with its value, or "
        "explain in words how it batches, edits and gates promotion. Exit status 1 when "
        "the file is invalid.",
    )
    check.add_argument("file", type=Path, help="policy YAML file")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Handler of ``factsync policy check``."""
    policy = load_policy(args.file)
    print(f"{args.file}: valid (policy '{policy.name}', digest {policy.digest})")
    print("\n".join(explain(policy)))
    return 0


_LEAD_HOLDS = {
    LeadHold.EVERY_LAYER: "- The spread holds the start token's outputs in place at every "
    "edit layer.",
    LeadHold.WHERE_CHEAP: "- The spread holds the start token's outputs in place at the edit "
    "layers whose key statistics leave it cheaper to move than a typical key.",
}


_TOOK_TESTS = {
    TookRule.WINS: "beats the old one on {where}",
    TookRule.MOST_PROBABLE: "beats the old one and is the greedy answer on {where}",
    TookRule.MOST_PROBABLE_BARE: "beats the old one on {where}, and is the greedy answer on "
    "the bare prompt",
}


def _took_sentence(editing: EditingPolicy) -> str:
    """When a fact leaves IME, in words."""
    where = ("the bare prompt, every context prefix and every phrasing"
             if editing.took_phrasings else "the bare prompt and every context prefix")
    test = _TOOK_TESTS[editing.took_rule].format(where=where)
    return f"- A fact leaves IME once its new object {test}."


def explain(policy: Policy) -> list[str]:
    """The policy in plain sentences."""
    batch, editing, evaluation = policy.batch, policy.editing, policy.evaluation
    lines = [
        f"- Jobs hold at most {batch.max_facts} fact(s); a change waits "
        f"{batch.coalesce_seconds:g}s for later changes to the same fact.",
        f"- Edits use {editing.algorithm.upper()} with up to {editing.max_iterations} IME "
        f"pass(es)" + (f" and NME with up to {editing.max_neighbours} neighbour(s) per fact"
                       + (f" and {editing.contrast_neighbours} of its relation with other "
                          "objects" if editing.contrast_neighbours else "")
                       + (", held in place in later jobs too" if editing.keep_neighbours_held
                          else "")
                       if editing.neighbours else ", without NME")
        + f", update fraction {editing.update_fraction:g}.",
        _took_sentence(editing),
        *([_LEAD_HOLDS[editing.hold_lead]] if editing.hold_lead is not LeadHold.NEVER else []),
        *(["- Every job holds the built-in guard facts the model states in place."]
          if editing.guard_facts else []),
        f"- Each candidate is scored on {evaluation.held_out_neighbours} held-out "
        "neighbour(s) per fact and on "
        + (f"a sample of {evaluation.retention_sample}" if evaluation.retention_sample
           else "all") + " earlier applied facts.",
        "- Promotion requires:",
    ]
    lines += [f"    {gate.describe()}" for gate in policy.gates]
    for relation, override in sorted(policy.relations.items()):
        lines.append(f"- For {relation} facts instead:")
        lines += [f"    {gate.describe()}" for gate in override.gates]
    if policy.repair_canaries:
        lines.append("- A candidate that only loses canaries, every edit of it taken, is "
                     "edited once more with those canaries stated again and judged again.")
    lines.append(
        "- On failure: reject the job." if policy.on_failure is OnFailure.REJECT else
        "- On failure: drop the facts whose edit did not take and retry the rest once; "
        "when every edit took, retry the job in halves until the facts at fault are alone."
    )
    monitor = policy.monitor
    lines.append(
        f"- Every {monitor.interval_seconds:g}s the live version is re-checked on "
        + (f"a sample of {monitor.retention_sample}" if monitor.retention_sample else "all")
        + " applied facts, the canary facts and perplexity; it is rolled back when:"
    )
    lines += [f"    {rule.describe()}" for rule in monitor.rules]
    lines.append(
        "- The facts of a rolled-back version go to quarantine for an operator."
        if monitor.on_rollback is OnRollback.QUARANTINE else
        "- The facts of a rolled-back version are queued to be edited again."
    )
    if monitor.restate_worn:
        lines.append("- Applied facts a check finds no longer stated are queued to be "
                     "edited again.")
    return lines
