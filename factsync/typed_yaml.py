"""Build typed dataclasses from parsed YAML, with errors that name the key.

Configuration and policy files are user input: an unknown key, a value of the wrong
type or a value out of range must stop loading with a message that says which key and
what was received. Range checks live in each dataclass's ``__post_init__`` and raise
``ValueError``; this module adds the key path to them. A nested section changes only the
keys it names: the others keep the section's default, which may differ from its class's
(``editing.target`` of a policy, say).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class SchemaError(ValueError):
    """A configuration or policy value is wrong; the message names its key."""


class Choice(str, Enum):
    """One of a fixed set of names a file may give; compares equal to its name and
    prints as it (``f"{choice}"`` is the name on every Python version)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: object, what: str) -> Choice:
        """The member named ``value``; ``what`` names the setting in the error."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{what} must be one of {', '.join(m.value for m in cls)}, "
                             f"got {value!r}") from None


def load_yaml_file(path: Path) -> Any:
    """Parse a YAML file; errors name the file and the position."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError as exc:
        raise SchemaError(f"{path}: no such file") from exc
    except yaml.YAMLError as exc:
        raise SchemaError(f"{path}: not valid YAML: {exc}") from exc


def build(cls: type[T], data: Any, key: str) -> T:
    """An instance of dataclass ``cls`` from ``data``; ``key`` names it in errors."""
    return _convert(cls, data, key)


def _convert(kind: Any, value: Any, key: str, default: Any = None) -> Any:
    """``value`` as a ``kind``; a mapping for a dataclass changes only the keys it names
    of ``default``, the field's default, where there is one."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _convert(options[0], value, key, default)
    if dataclasses.is_dataclass(kind):
        return _dataclass(kind, value, key, default)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise SchemaError(f"{key}: expected a list, got {_show(value)}")
        item = args[0]
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{key}: expected a mapping, got {_show(value)}")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if kind is typing.Any:
        return value
    if isinstance(kind, type) and issubclass(kind, Choice):
        try:
            return kind.parse(value, key)
        except ValueError as exc:
            raise SchemaError(str(exc)) from exc
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise SchemaError(f"{key}: expected a path, got {_show(value)}")
        return Path(value).expanduser()
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (str, int, float, bool):
        if type(value) is not kind:
            raise SchemaError(f"{key}: expected {kind.__name__}, got {_show(value)}")
        return value
    raise TypeError(f"{key}: unsupported field type {kind!r}")


def _dataclass(cls: type, value: Any, key: str, default: Any = None) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SchemaError(f"{key}: expected a mapping, got {_show(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        raise SchemaError(
            f"{key}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    kwargs = ({name: getattr(default, name) for name in fields} if default is not None
              else {})
    kwargs.update({name: _convert(hints[name], v, f"{key}.{name}", _default_of(fields[name]))
                   for name, v in value.items()})
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise SchemaError(f"{key}: {exc}") from exc
    except ValueError as exc:
        raise SchemaError(f"{key}: {exc}") from exc


def _default_of(field: dataclasses.Field) -> Any:
    """The value ``field`` takes when its key is left out, or ``None`` without one."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"
