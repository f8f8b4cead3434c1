"""Options from a YAML or JSON file (``--config``), checked against an options dataclass.

Any command whose options are a dataclass declared with :func:`surgery.options.opt` can take a file
of them: keys are the field names, spelled ``r_iw`` or ``r-iw`` (a leading ``--`` is allowed too);
values have the field's type. YAML is read with ``safe_load`` only (no object tags, nothing runs);
a ``.json`` file is read as JSON. An unknown key or a value of the wrong type is one sentence naming
the file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import OptionError

__all__ = ["dump_options", "load_option_file", "option_values"]


def load_option_file(path: str | Path, cls: type, *, extra_keys: Iterable[str] = ()) -> dict[str, Any]:
    """The options in the file at ``path`` for the dataclass ``cls``: ``{field name: value}``.

    ``extra_keys`` are further keys the caller handles itself (such as ``preset``); their values are
    returned as they are. Raises :class:`OptionError` for a missing, unparsable or non-mapping file, an
    unknown key, a key given twice in two spellings, or a value of the wrong type.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OptionError(f"--config file {path} does not exist.") from None
    except IsADirectoryError:
        raise OptionError(f"--config {path} is a folder, not a YAML or JSON file.") from None
    data = _parse(text, path)
    return option_values(data, cls, where=str(path), extra_keys=extra_keys)


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise OptionError(f"--config {path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise OptionError(f"--config {path} is not valid YAML ({problem}{where}).") from None


def option_values(data: Any, cls: type, *, where: str, extra_keys: Iterable[str] = ()) -> dict[str, Any]:
    """``data`` (a parsed file) checked against ``cls``'s CLI fields; see :func:`load_option_file`."""
    if data is None:  # an empty file sets nothing
        return {}
    if not isinstance(data, dict):
        raise OptionError(f"{where} must hold a mapping of option names to values, not a {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
    extras = set(extra_keys)
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).removeprefix("--").replace("-", "_")
        if key not in fields and key not in extras:
            known = ", ".join(sorted({*fields, *extras}))
            raise OptionError(f"{where}: unknown option {str(raw_key)!r}; known: {known}.")
        if key in out:
            raise OptionError(f"{where}: option {key!r} is given twice.")
        out[key] = value if key in extras else _typed(value, hints[key], f"{where}: option {key!r}")
    return out


def _typed(value: Any, annotation: Any, what: str) -> Any:
    """``value`` as the field type ``annotation`` wants it, or one sentence saying what was expected."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _typed(value, args[0], what) if len(args) == 1 else value
    if typing.get_origin(annotation) is tuple:
        items = value if isinstance(value, list) else [value]
        return tuple(_typed(v, args[0], what) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise OptionError(f"{what} must be true or false, got {value!r}.")
    if annotation in (int, float):
        return _number(value, annotation, what)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise OptionError(f"{what} must be a string, got {value!r}.")
    return value


def _number(value: Any, kind: type, what: str) -> Any:
    """An int or float field's value; a string such as ``1e-10`` is accepted (YAML 1.1 reads it as one)."""
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        noun = "an integer" if kind is int else "a number"
        raise OptionError(f"{what} must be {noun}, got {value!r}.")
    if kind is int:
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise OptionError(f"{what} must be an integer, got {value!r}.")
        return int(value)
    return float(value)


def dump_options(values: Mapping[str, Any], header: str = "") -> str:
    """YAML text of ``values`` in their order, under ``header`` as comment lines; reads back with
    :func:`load_option_file` to the same values."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return comment + yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, allow_unicode=True)
