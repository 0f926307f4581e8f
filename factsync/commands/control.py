"""``factsync rollback`` and ``factsync revert-fact``: ask the running daemon to act."""

from __future__ import annotations

import argparse
import json
import urllib.error
from pathlib import Path

from factsync.daemon.config import load_config
from factsync.http_client import post_json


def register(commands: argparse._SubParsersAction) -> None:
    """Add the commands that change the live model through the daemon's API."""
    rollback = commands.add_parser(
        "rollback",
        help="roll the live version back (to its parent, or to --to VERSION)",
        description="Ask the running daemon to make an earlier version live. The model is "
        "rebuilt from the base plus that version's deltas; the rolled-back versions stay in "
        "history, marked, and their facts are handled as the policy's monitor.on_rollback "
        "says. Uses the API address and token of --config (FACTSYNC_API_TOKEN overrides).",
    )
    rollback.add_argument("--to", dest="to_version", help="the version to go back to")
    rollback.add_argument("--config", type=Path, help="the daemon's YAML configuration")
    rollback.set_defaults(handler=run_rollback)

    revert = commands.add_parser(
        "revert-fact",
        help="edit one applied fact back to the object it replaced",
        description="Queue a new edit that puts one fact back to its previous object, "
        "keeping every other edit; it goes through the policy gates like any edit. The "
        "revert holds until the feed states an object other than the reverted one.",
    )
    revert.add_argument("subject")
    revert.add_argument("relation", help="relation id or alias, e.g. P36 or capital")
    revert.add_argument("--config", type=Path, help="the daemon's YAML configuration")
    revert.set_defaults(handler=run_revert)


def _call(config_path: Path | None, path: str, body: dict) -> dict:
    config = load_config(config_path)
    host = "127.0.0.1" if config.api.host in ("0.0.0.0", "::") else config.api.host
    url = f"http://{host}:{config.api.port}{path}"
    try:
        return json.loads(post_json(url, body, timeout=660, token=config.api.token))
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise RuntimeError(f"the daemon refused: {detail}") from exc
    except urllib.error.URLError as exc:
        raise RuntimeError(f"no factsync daemon answers at {url} ({exc.reason})") from exc


def run_rollback(args: argparse.Namespace) -> int:
    """Handler of ``factsync rollback``."""
    result = _call(args.config, "/rollback", {"to": args.to_version} if args.to_version else {})
    if result.get("queued"):
        print(f"rollback to {result['to']} queued behind the running job")
    else:
        print(f"live version is now {result['to']}; rolled back: "
              f"{', '.join(result['rolled_back'])}")
    return 0


def run_revert(args: argparse.Namespace) -> int:
    """Handler of ``factsync revert-fact``."""
    from factsync.facts.catalog import RelationCatalog

    relation = RelationCatalog.built_in().resolve(args.relation)
    relation_id = relation.id if relation else args.relation
    change = _call(args.config, "/facts/revert", {"subject": args.subject, "relation": relation_id})
    print(f"queued change {change['id']}: {change['subject']} {change['relation']} -> "
          f"{change['object']} ({change['reason']})")
    return 0
