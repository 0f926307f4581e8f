"""Reading fact rows from .jsonl, .csv and .yaml files, each with its line number."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

SUFFIXES = (".jsonl", ".csv", ".yaml", ".yml")

RawRow = tuple[int, Any, str | None]
"""(line number, the parsed row or ``None``, why it could not be parsed or ``None``)."""


def read_rows(path: Path) -> Iterator[RawRow]:
    """Every row of a fact file, with its line; unreadable rows carry an error instead."""
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8", errors="strict", newline="") as handle:
        try:
            text = handle.read()
        except UnicodeDecodeError as exc:
            yield 1, None, f"file is not UTF-8 text: {exc.reason} at byte {exc.start}"
            return
    if suffix == ".jsonl":
        yield from _jsonl_rows(text)
    elif suffix == ".csv":
        yield from _csv_rows(text)
    elif suffix in (".yaml", ".yml"):
        yield from _yaml_rows(text)
    else:
        raise ValueError(f"{path}: not a fact file (expected one of {', '.join(SUFFIXES)})")


def _jsonl_rows(text: str) -> Iterator[RawRow]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield number, None, f"not valid JSON: {exc.msg} at column {exc.colno}"


def _csv_rows(text: str) -> Iterator[RawRow]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    if reader.fieldnames is None:
        return
    for row in reader:
        if None in row:
            yield reader.line_num, None, f"more cells than the {len(reader.fieldnames)} headers"
            continue
        if all(value in ("", None) for value in row.values()):
            continue
        yield reader.line_num, {k: v for k, v in row.items() if v not in ("", None)}, None


def _yaml_rows(text: str) -> Iterator[RawRow]:
    try:
        document = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        yield (mark.line + 1 if mark else 1), None, f"not valid YAML: {exc}"
        return
    if document is None:
        return
    if isinstance(document, yaml.MappingNode):  # also accept {facts: [...]}
        for key, value in document.value:
            if key.value == "facts":
                document = value
                break
    if not isinstance(document, yaml.SequenceNode):
        yield document.start_mark.line + 1, None, "expected a list of facts"
        return
    for node in document.value:
        line = node.start_mark.line + 1
        try:
            yield line, yaml.SafeLoader("").construct_document(node), None
        except yaml.YAMLError as exc:
            yield line, None, f"not valid YAML: {exc}"
