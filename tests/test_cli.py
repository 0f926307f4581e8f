"""The command line: help on every command, clear errors for bad input."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from factsync.cli import build_parser, main
from factsync.commands.edit import read_facts_file


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):  # noqa: ANN202
    """Every command and subcommand ``parser`` offers, as argument prefixes."""
    yield list(prefix)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


COMMANDS = list(_commands(build_parser()))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "factsync")
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert "usage: factsync" in shown
    assert "%%" not in shown  # a description, unlike an option's help, is not %-formatted


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "factsync.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith("factsync ")


def test_edit_without_a_fact_names_what_is_missing(capsys):
    assert main(["edit", "--subject", "Paris"]) == 1
    assert "give --subject, --template and --new, or --facts FILE" in capsys.readouterr().err


def test_bad_neighbour_option_is_explained(capsys):
    args = ["edit", "--subject", "A", "--template", "{} is", "--new", "B", "--neighbour", "x|y"]
    assert main(args) == 1
    assert "must be SUBJECT|TEMPLATE|OBJECT" in capsys.readouterr().err


def test_facts_file_errors_name_the_line(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(
        '{"subject": "Paris", "template": "{} is in", "new_object": "Italy"}\n'
        "\n"
        '{"subject": "Rome", "template": "no slot", "new_object": "France"}\n'
    )
    with pytest.raises(ValueError, match=r"facts.jsonl:3: .*has no '\{\}'"):
        read_facts_file(path)
    path.write_text('{"subject": "Paris", "template": "{} is in"}\n')
    with pytest.raises(ValueError, match=r"facts.jsonl:1: KeyError\('new_object'\)"):
        read_facts_file(path)


def test_facts_file_reads_neighbours(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(
        '{"subject": "Paris", "template": "{} is in", "new_object": "Italy", '
        '"old_object": "France", "neighbours": '
        '[{"subject": "Lyon", "template": "{} is in", "object": "France"}]}\n'
    )
    (request,) = read_facts_file(path)
    assert request.old_object == "France"
    assert request.neighbours[0].subject == "Lyon"


def test_bench_without_data_says_where_to_put_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "zopt", "--n", "1"]) == 1
    assert "no COUNTERFACT data: pass --data FILE" in capsys.readouterr().err
