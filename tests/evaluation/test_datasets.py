"""Reading COUNTERFACT and ZsRE records into cases; malformed records name themselves."""

from __future__ import annotations

import json
import logging

import pytest

from factsync.evaluation.suites import DATASETS, default_dataset_path, load_cases
from factsync.facts.catalog import RelationCatalog

ZSRE_RECORDS = [
    {
        "subject": "Watts Humphrey",
        "src": "What university did Watts Humphrey attend?",
        "pred": "Trinity College",
        "rephrase": "Which university was attended by Watts Humphrey?",
        "alt": "University of Michigan",
        "answers": ["Illinois Institute of Technology"],
        "loc": "nq question: who sings the theme song for the show friends",
        "loc_ans": "The Rembrandts",
        "cond": "Trinity College >> University of Michigan || What university did Watts "
        "Humphrey attend?",
        "neighborhood_samples": [
            {
                "subject": "the theme song for the show friends",
                "prompt": "nq question: who sings {}?",
            }
        ],
    },
    {
        "subject": "Ramalinaceae",
        "src": "Which family does Ramalinaceae belong to?",
        "pred": "Lecanorales",
        "rephrase": "What family are Ramalinaceae part of?",
        "alt": "",
        "answers": ["Lecanorales"],
        "loc": "nq question: where is the capital of france",
        "loc_ans": "Paris",
        "cond": "Lecanorales >>  || Which family does Ramalinaceae belong to?",
        "neighborhood_samples": [
            {"subject": "the capital of france", "prompt": "nq question: where is {}?"}
        ],
    },
    {
        "subject": "Denny Herzig",
        "src": "Which position does Denny Herzig play?",
        "pred": "defender",
        "rephrase": "What position does Denny Herzig play in football?",
        "alt": "winger",
        "answers": ["defender"],
        "loc": "nq question: who owns skype",
        "loc_ans": "Microsoft",
        "cond": "defender >> winger || Which position does Denny Herzig play?",
        "neighborhood_samples": [{"subject": "skype", "prompt": "nq question: who owns {}?"}],
    },
]

COUNTERFACT_RECORD = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The capital of {} is",
        "subject": "France",
        "target_new": {"str": "Rome"},
        "target_true": {"str": "Paris"},
    },
    "paraphrase_prompts": ["France's capital city is"],
    "neighborhood_samples": [{"subject": "Lyon", "prompt": "{} is near"}],
}


def _write(tmp_path, records, name="records.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_a_zsre_record_becomes_a_case(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cases = load_cases("zsre", _write(tmp_path, ZSRE_RECORDS))
    assert [c.case_id for c in cases] == [0, 2]  # record 1 has no alt
    assert "skipped 1 records with an empty alt" in caplog.text and ": 1" in caplog.text
    case = cases[0]
    request = case.request
    assert request.template == "What university did {} attend?"
    assert request.prompt == ZSRE_RECORDS[0]["src"]
    assert (request.subject, request.new_object, request.old_object) == (
        "Watts Humphrey",
        "University of Michigan",
        "Trinity College",
    )
    assert case.paraphrases == ("Which university was attended by Watts Humphrey?",)
    assert case.neighbourhood == (
        ("the theme song for the show friends", "nq question: who sings {}?"),
    )
    assert case.neighbourhood_objects == ("The Rembrandts",)
    (fact,) = case.neighbourhood_facts()
    # The neighbourhood prompt is the loc question with "?", as MEMIT scores it.
    assert fact.template.format(fact.subject) == ZSRE_RECORDS[0]["loc"] + "?"
    assert fact.object == "The Rembrandts"


def test_the_zsre_limit_counts_cases(tmp_path):
    path = _write(tmp_path, ZSRE_RECORDS)
    assert [c.case_id for c in load_cases("zsre", path, limit=1)] == [0]
    assert [c.case_id for c in load_cases("zsre", path, limit=2)] == [0, 2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"loc_ans": None}, r"record 2 is malformed.*loc_ans must be a non-empty string"),
        ({"pred": ""}, r"record 2 is malformed.*pred must be a non-empty string"),
        ({"src": "Which position does he play?"}, r"record 2 .*does not contain the subject"),
        ({"src": "Which {position} does Denny Herzig play?"}, r"record 2 .*braces"),
        ({"alt": 3}, r"record 2 is malformed.*alt must be a string"),
        ({"neighborhood_samples": [{"subject": "skype"}]}, r"record 2 is malformed.*'prompt'"),
        ({"neighborhood_samples": [{"subject": "skype", "prompt": "who owns skype?"}]},
         r"record 2 is malformed.*has no '\{\}'"),
    ],
)
def test_a_malformed_zsre_record_is_named(tmp_path, change, message):
    records = [*ZSRE_RECORDS[:2], {**ZSRE_RECORDS[2], **change}]
    with pytest.raises(ValueError, match=message):
        load_cases("zsre", _write(tmp_path, records))


def test_a_record_without_a_field_is_named(tmp_path):
    record = {k: v for k, v in ZSRE_RECORDS[0].items() if k != "rephrase"}
    with pytest.raises(ValueError, match=r"record 1 is malformed.*'rephrase'"):
        load_cases("zsre", _write(tmp_path, [ZSRE_RECORDS[0], record]))


def test_a_counterfact_record_keeps_its_true_object_for_the_neighbourhood(tmp_path):
    (case,) = load_cases("counterfact", _write(tmp_path, [COUNTERFACT_RECORD]))
    assert case.case_id == 7 and case.request.old_object == "Paris"
    assert case.neighbourhood_objects is None
    assert [(n.subject, n.template, n.object) for n in case.neighbourhood_facts()] == [
        ("Lyon", "{} is near", "Paris")
    ]


def test_a_counterfact_request_carries_its_relations_phrasings_and_none_is_scored(tmp_path):
    capital = RelationCatalog.built_in().resolve("P36")
    trained = "In the news today: " + capital.phrasings[0].format("France")
    record = {**COUNTERFACT_RECORD,
              "requested_rewrite": {**COUNTERFACT_RECORD["requested_rewrite"],
                                    "relation_id": "P36"},
              "paraphrase_prompts": ["France's capital city is", trained]}
    unknown = {**record, "case_id": 8,
               "requested_rewrite": {**record["requested_rewrite"], "relation_id": "P0"}}
    with_phrasings, without = load_cases("counterfact", _write(tmp_path, [record, unknown]))
    assert with_phrasings.request.phrasings == capital.phrasings
    assert with_phrasings.paraphrases == ("France's capital city is",)
    assert without.request.phrasings == () and len(without.paraphrases) == 2


def test_a_malformed_counterfact_record_is_named(tmp_path):
    broken = {**COUNTERFACT_RECORD, "requested_rewrite": {"subject": "France"}}
    with pytest.raises(ValueError, match=r"record 1 is malformed.*'prompt'"):
        load_cases("counterfact", _write(tmp_path, [COUNTERFACT_RECORD, broken]))


@pytest.mark.parametrize("dataset", DATASETS)
def test_a_file_that_is_not_a_list_of_records_is_refused(tmp_path, dataset):
    with pytest.raises(ValueError, match="must hold a JSON list"):
        load_cases(dataset, _write(tmp_path, {"records": []}))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_cases(dataset, tmp_path / "bad.json")


def test_an_unknown_dataset_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'nq'; choose from counterfact, zsre"):
        load_cases("nq", tmp_path / "x.json")


def test_the_shared_copy_is_found_beside_the_checkout(tmp_path, monkeypatch):
    checkout = tmp_path / "main" / "factsync"
    checkout.mkdir(parents=True)
    shared = tmp_path / "shared" / "data" / "zsre"
    shared.mkdir(parents=True)
    (shared / "zsre-dev-1000.json").write_text("[]")
    monkeypatch.chdir(checkout)
    assert default_dataset_path("zsre") == shared / "zsre-dev-1000.json"
    assert default_dataset_path("counterfact") is None
