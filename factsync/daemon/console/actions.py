"""The console's actions: roll back, revert a fact, retry a fact.

Each comes as a form POST carrying the operator's token (when the daemon has one) and a
ticked confirmation box. An action calls what the JSON API calls, its errors mean what
they mean there, and a done action answers with the URL of the page to go back to,
which then says what was done (``notice``).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from factsync.daemon.api_protocol import ApiError
from factsync.daemon.api_routes import ApiContext
from factsync.store.faults import unwritable_reason
from factsync.store.records import StoreError

CONFIRMED = "yes"
"""The value of a ticked confirmation box."""
MAX_FIELDS = 16
"""Fields a form may have; the console's have four at most."""

NOTICES = {
    "rollback": "Rolled back: version {to} is live again.",
    "rollback-queued": "The rollback to version {to} is queued behind the running job; "
                       "reload this page in a while to see it live.",
    "revert": "Revert queued: the fact will be edited back to the object it replaced.",
    "retry": "Retry queued: the fact's desired state goes through an edit again.",
}
"""What a page says after each action (``done`` in its query), filled from the query."""


Fields = Mapping[str, str]
"""A form's text fields by name."""


class Refused(ApiError):
    """An action that was not done: the HTTP status and the sentence the page shows
    (the console answers it with a page, where the JSON API answers ``{"error"}``)."""


async def read_form(request: Request, *, max_bytes: int) -> Fields:
    """The text fields of a form POST (URL-encoded or multipart), its size checked
    against ``max_bytes`` before a byte is read, as the JSON API checks its bodies.

    Raises:
        Refused: 411 without a Content-Length, 413 over the limit, 400 for a form that
            cannot be parsed.
    """
    length = request.headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()):
        raise Refused(HTTPStatus.LENGTH_REQUIRED, "The form came without a Content-Length.")
    # Comparing lengths first keeps int() off a header of thousands of digits.
    if len(length) > len(str(max_bytes)) or int(length) > max_bytes:
        raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                      f"The form is {length[:20]} bytes, over the {max_bytes} byte limit.")
    try:
        form = await request.form(max_files=0, max_fields=MAX_FIELDS)
    except HTTPException as exc:  # Starlette's answer to a form it cannot parse, in an app
        raise Refused(HTTPStatus.BAD_REQUEST, f"The form cannot be read: {exc.detail}") from exc
    except MultiPartException as exc:  # the same outside one
        raise Refused(HTTPStatus.BAD_REQUEST, f"The form cannot be read: {exc.message}") from exc
    return {name: value for name, value in form.items() if isinstance(value, str)}


def authorise(context: ApiContext, *, token: str, confirm: str) -> None:
    """Refuse unless the token is right (when the daemon has one) and the box is ticked.

    Raises:
        Refused: 403 for a missing or wrong token, 400 for an unticked box.
    """
    expected = context.token
    if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
        raise Refused(HTTPStatus.FORBIDDEN,
                      "The API token is missing or wrong, so nothing was done. Enter the "
                      "token the daemon was given (api.token or FACTSYNC_API_TOKEN).")
    if confirm != CONFIRMED:
        raise Refused(HTTPStatus.BAD_REQUEST,
                      "The confirmation box was not ticked, so nothing was done.")


def roll_back(context: ApiContext, *, to: str) -> str:
    """Roll back to version ``to`` (the live version's parent when empty); the URL of
    the versions page saying so.

    Raises:
        Refused: 409 when the target cannot be made live, 503 while the daemon starts
            or the store cannot write.
    """
    with _unless_unwritable():
        try:
            result = context.rollback(to or None)
        except (ValueError, KeyError, StoreError) as exc:
            raise Refused(HTTPStatus.CONFLICT, str(exc).strip("'\"")) from exc
        except RuntimeError as exc:
            raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from exc
    done = "rollback-queued" if result.get("queued") else "rollback"
    return "/ui/?" + urlencode({"done": done, "to": result.get("to") or to})


def revert_fact(context: ApiContext, *, subject: str, relation: str) -> str:
    """Queue an edit of an applied fact back to the object it replaced; the URL of the
    fact's page.

    Raises:
        Refused: 400 without a subject and relation, 404 for a fact no edit applied,
            503 when the store cannot write.
    """
    _check_fact(subject, relation)
    with _unless_unwritable():
        try:
            context.store.revert(subject=subject, relation=relation)
        except KeyError as exc:
            raise Refused(HTTPStatus.NOT_FOUND, str(exc).strip("\"")) from exc
    context.wake()
    return fact_url(subject, relation, done="revert")


def retry_fact(context: ApiContext, *, subject: str, relation: str) -> str:
    """Queue a fact's desired state again; the URL of the fact's page.

    Raises:
        Refused: 400 without a subject and relation, 404 for a fact the store does not
            hold, 503 when the store cannot write.
    """
    _check_fact(subject, relation)
    with _unless_unwritable():
        change = context.store.retry(subject=subject, relation=relation)
    if change is None:
        raise Refused(HTTPStatus.NOT_FOUND, "No desired fact has that subject and relation.")
    context.wake()
    return fact_url(subject, relation, done="retry")


def fact_url(subject: str, relation: str, *, done: str | None = None) -> str:
    """The URL of one fact's page."""
    query = {"subject": subject, "relation": relation, **({"done": done} if done else {})}
    return "/ui/fact?" + urlencode(query)


def notice(query: Mapping[str, str]) -> str | None:
    """What the page says after the action named by ``done`` in ``query``, if any."""
    template = NOTICES.get(query.get("done", ""))
    return None if template is None else template.format(to=query.get("to", "?"))


def _check_fact(subject: str, relation: str) -> None:
    if not subject or not relation:
        raise Refused(HTTPStatus.BAD_REQUEST, "Both a subject and a relation are needed.")


@contextmanager
def _unless_unwritable() -> Iterator[None]:
    """Turn a state store that cannot write now (full, read-only, locked) into a 503."""
    try:
        yield
    except Refused:
        raise
    except Exception as exc:
        reason = unwritable_reason(exc)
        if reason is None:
            raise
        raise Refused(HTTPStatus.SERVICE_UNAVAILABLE,
                      f"The state store cannot write right now ({reason}); "
                      "try again later.") from exc
