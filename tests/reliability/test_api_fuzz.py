"""The HTTP API of a live daemon, fuzzed from the OpenAPI document it serves.

Schemathesis reads ``GET /openapi.json`` (the one list of what the API offers) and, for
every operation there, sends generated requests: valid ones (positive) and ones that
break the schema (negative). No answer may be a 5xx, and every answer must have a
documented status, content type and body. Every operation that needs the token answers
401 without it (or with a wrong one), and every body over ``api.max_body_bytes``
answers 413.

The runs are derandomised (a fixed seed per operation) and bounded, so that CI sees the
same requests every time and the file takes well under two minutes on a small CPU.
"""

from __future__ import annotations

import json
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.reliability

TOKEN = "fuzz-token"
MAX_BODY_BYTES = 20_000
EXAMPLES = {schemathesis.GenerationMode.POSITIVE: 30, schemathesis.GenerationMode.NEGATIVE: 20}
"""Cases per operation and mode: enough to reach the edges (huge and negative numbers,
odd unicode, wrong types) while 16 operations stay within about a minute of CPU."""
GUARD_EXAMPLES = 10
"""Valid requests per secured operation and wrong token in the 401 check."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
HTTP_TIMEOUT = 60.0


def fuzz_settings(examples: int) -> settings:
    """Deterministic and bounded: a seed derived from the test, no example database."""
    return settings(
        max_examples=examples, deadline=None, derandomize=True, database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                               HealthCheck.data_too_large],
    )


@dataclass
class LiveApi:
    """A running daemon and its API schema as schemathesis loaded it over HTTP."""

    base_url: str
    schema: schemathesis.BaseSchema
    session: requests.Session = field(default_factory=requests.Session)

    def operations(self) -> Iterator[schemathesis.APIOperation]:
        for result in self.schema.get_all_operations():
            yield result.ok()

    def secured(self) -> list[schemathesis.APIOperation]:
        return [op for op in self.operations() if op.definition.raw.get("security")]


@pytest.fixture
def live_api(tiny_daemon, tmp_path) -> Iterator[LiveApi]:
    daemon = tiny_daemon(tmp_path, api={"token": TOKEN, "max_body_bytes": MAX_BODY_BYTES})
    daemon.start()
    base_url = f"http://127.0.0.1:{daemon.api_port}"
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=HTTP_TIMEOUT)
    schema.validate()
    api = LiveApi(base_url=base_url, schema=schema)
    yield api
    api.session.close()
    assert daemon.stop() == 0, daemon.log_tail()
    errors = [line for line in daemon.log_path.read_text(errors="replace").splitlines()
              if "ERROR factsync.daemon.api" in line]
    assert not errors, "\n".join(errors)


def run_cases(operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode,
              test: Callable[[schemathesis.Case], None], *, examples: int | None = None) -> int:
    """Run ``test`` on generated cases of ``operation``; how many cases ran.

    An operation with no parameters or body, or only free strings, has nothing to make
    invalid: its negative run is empty.
    """
    ran = 0

    @fuzz_settings(examples or EXAMPLES[mode])
    @given(case=operation.as_strategy(generation_mode=mode))
    def each(case: schemathesis.Case) -> None:
        nonlocal ran
        ran += 1
        test(case)

    try:
        each()
    except Unsatisfiable:
        if mode is not schemathesis.GenerationMode.NEGATIVE or ran:
            raise
    return ran


def test_fuzzed_requests_get_no_server_error_and_answers_match_the_schema(live_api):
    authorised = {"Authorization": f"Bearer {TOKEN}"}
    operations = list(live_api.operations())
    answers: dict[str, Counter] = {op.label: Counter() for op in operations}
    failures, started = [], time.monotonic()
    for operation in operations:

        def check(case: schemathesis.Case, seen: Counter = answers[operation.label]) -> None:
            response = case.call_and_validate(
                base_url=live_api.base_url, session=live_api.session, headers=authorised,
                checks=CHECKS, timeout=HTTP_TIMEOUT)
            seen[response.status_code] += 1

        for mode in EXAMPLES:
            try:  # gather every operation's failures before failing
                run_cases(operation, mode, check)
            except (Exception, schemathesis.errors.FailureGroup) as exc:  # noqa: BLE001
                # The traceback shows a flaky case's sub-exceptions (the first call's error).
                failures.append(f"{operation.label} ({mode.value}): "
                                + "".join(traceback.format_exception(exc)))
    total = sum(sum(seen.values()) for seen in answers.values())
    print(f"\n{total} cases in {time.monotonic() - started:.0f}s")
    for label, seen in answers.items():
        print(f"  {label}: {dict(sorted(seen.items()))}")
    assert not failures, "\n\n".join(failures)
    assert all(answers.values()), "every operation was called"
    # The token reached the handlers: no operation only ever answered 401.
    assert not [label for label, seen in answers.items() if set(seen) == {401}]


def test_without_the_token_401_and_over_the_body_limit_413(live_api):
    """One daemon for both guards (a start costs seconds); each checks every operation."""
    secured = live_api.secured()
    assert {op.label for op in secured} == {"POST /facts", "POST /facts/retry",
                                            "POST /facts/revert", "POST /rollback"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):

        def refused(case: schemathesis.Case, headers: dict = headers) -> None:
            response = case.call(base_url=live_api.base_url, session=live_api.session,
                                 headers=headers, timeout=HTTP_TIMEOUT)
            assert response.status_code == 401, (case.as_curl_command(), response.text)
            assert response.json() == {"error": "missing or wrong bearer token"}

        for operation in secured:
            assert run_cases(operation, schemathesis.GenerationMode.POSITIVE, refused,
                             examples=GUARD_EXAMPLES) > 0

    oversized = json.dumps({"facts": ["x" * MAX_BODY_BYTES]}).encode()
    posts = [op for op in live_api.operations() if op.method.upper() == "POST"]
    assert len(posts) >= 5
    for operation in posts:
        assert "413" in operation.definition.raw["responses"], operation.label
        response = live_api.session.post(
            live_api.base_url + operation.path, data=oversized, timeout=HTTP_TIMEOUT,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        assert response.status_code == 413, (operation.label, response.text)
        assert response.json() == {"error": f"body of {len(oversized)} bytes is over the "
                                            f"{MAX_BODY_BYTES} limit"}
    assert live_api.session.get(live_api.base_url + "/healthz").json() == {"status": "ok"}
