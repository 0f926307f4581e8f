"""Property-based checks of the parsers and the reconciler on arbitrary input.

Whatever a feed sends, a row is either a valid record or refused with a reason naming
a field; a file never stops the rows after a bad one; and the reconciler leaves every
change in exactly one state with at most one live change per fact.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factsync.connectors.file_rows import read_rows
from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import KNOWN_FIELDS, FactRecord, RowError, parse_row
from factsync.jobs.reconciler import Reconciler
from factsync.policies.schema import BatchPolicy, Policy
from factsync.store.store import StateStore

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)
rows = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(sorted(KNOWN_FIELDS) + ["extra"]), json_values,
                    max_size=7),
    st.fixed_dictionaries({"subject": st.text(), "relation": st.text(),
                           "object": st.text()}),
)


@given(rows)
@settings(max_examples=400)
def test_any_row_is_a_valid_record_or_refused_with_a_reason(raw):
    try:
        record = parse_row(raw, source="s", location="f:1")
    except RowError as exc:
        assert str(exc)  # every refusal says why
        return
    assert record.subject and record.relation and (record.object or record.deleted)
    for value in (record.subject, record.relation, record.object):
        assert value == value.strip() and len(value) <= 500
        assert all(ord(c) >= 32 for c in value)


@given(st.lists(st.one_of(rows, st.text(max_size=40)), max_size=25))
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_a_jsonl_file_yields_one_entry_per_non_blank_line_whatever_it_holds(lines):
    text = "\n".join(line if isinstance(line, str) and "\n" not in line and "\r" not in line
                     else json.dumps(line) for line in lines)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "feed.jsonl"
        path.write_text(text, encoding="utf-8")
        entries = list(read_rows(path))
    expected = [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    assert [line for line, _, _ in entries] == expected
    for _, raw, problem in entries:
        assert problem is None or (raw is None and problem)


subjects = st.sampled_from(["France", "Italy", "Spain", "Japan"])
objects = st.sampled_from(["Paris", "Rome", "Madrid", "Tokyo", ""])


@given(st.lists(st.tuples(subjects, objects, st.booleans()), min_size=1, max_size=30),
       st.integers(min_value=1, max_value=5))
@settings(max_examples=60, deadline=None)
def test_the_reconciler_keeps_one_live_change_per_fact_and_loses_none(events, batch):
    with tempfile.TemporaryDirectory() as scratch:
        clock = [0.0]
        store = StateStore(Path(scratch) / "state.sqlite", clock=lambda: clock[0])
        for subject, obj, deleted in events:
            record = FactRecord(subject, "P36", obj or "X", "t", "x", deleted=deleted)
            store.record_desired(record=record, relation="P36")
        planner = Reconciler(store=store, catalog=RelationCatalog.built_in(),
                             policy=Policy(batch=BatchPolicy(max_facts=batch,
                                                             coalesce_seconds=1)),
                             clock=lambda: clock[0] + 10)
        jobs = list(iter(lambda: planner.plan(lambda cs: [c.object == "Paris" for c in cs]),
                         None))
        changes = store.changes(limit=10_000)
        live = [c for c in changes if c.state not in ("superseded",)]
        keys = [(c.subject, c.relation) for c in live]
        assert len(keys) == len(set(keys))  # at most one live change per fact
        for change in changes:
            assert change.state in ("superseded", "queued", "already_true", "recorded")
        queued = [c for c in changes if c.state == "queued"]
        assert sum(len(store.changes(job_id=j.id)) for j in jobs) == len(queued)
        assert all(len(store.changes(job_id=j.id)) <= batch for j in jobs)
        desired = {(f.subject, f.object, f.deleted) for f in store.desired_facts()}
        assert {(c.subject, c.object, c.deleted) for c in live} == desired
        store.close()
