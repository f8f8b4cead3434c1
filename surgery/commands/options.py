"""Options dataclasses -> click options: the one way every command declares what it accepts.

A command's options are a frozen dataclass whose fields are declared with :func:`surgery.options.opt`
(mergekit-style). The library takes the dataclass; the CLI gets one click option per field from
:func:`add_options` and rebuilds the dataclass with :func:`options_from`. So a knob has one name, one
default and one help text everywhere: CLI, library call, and the manifest that records it.

Field metadata: see :mod:`surgery.options`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import Field
from pathlib import Path
from typing import Any, TypeVar

import click

from ..options import check_numbers, flag_of, opt

__all__ = ["ModelAccess", "add_options", "flag_of", "opt", "options_from", "reproducible_command", "required", "switch"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def switch(help: str, **kwargs: Any) -> Any:
    """An on-only flag (``--allow-pickle``): False unless given, no ``--no-`` form (it would mean nothing)."""
    f = opt(False, help, **kwargs)
    return dataclasses.field(default=False, metadata={**f.metadata, "switch": True})


def required(help: str, **kwargs: Any) -> Any:
    """An option the command cannot run without (``--base``): the field holds None only before parsing."""
    f = opt(None, help, **kwargs)
    return dataclasses.field(default=None, metadata={**f.metadata, "required": True})


@dataclasses.dataclass(frozen=True)
class ModelAccess:
    """What a command that loads a model may let that model's files do: the same two switches everywhere."""

    trust_remote_code: bool = switch("Allow model code from the checkpoint (off by default).")
    allow_pickle: bool = switch("Accept pickle (.bin) weights; they can run code.")


def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _click_type(annotation: Any, choices: tuple[str, ...] | None) -> Any:
    if choices:
        return click.Choice(choices)
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _click_type(args[0], None)
    if origin is tuple and args:
        return _click_type(args[0], None)
    if annotation in (int, float, str):
        return annotation
    if annotation is Path:
        return click.Path(path_type=Path)
    return str


#: the help note of an override option: a text with ``{default}``, or ``(field name, shown default) -> text``
UnsetNote = str | Callable[[str, Any], str]


def add_options(cls: type, *, unset: UnsetNote | None = None) -> Callable[[F], F]:
    """Decorate a click command with one option per CLI field of the dataclass ``cls``.

    ``unset``: the options are overrides whose value is None unless given (the command fills the rest
    from elsewhere, such as a recipe or a preset); ``unset`` is the help note that says so, with
    ``{default}`` standing for the field's own default, or a function of the field's name and that
    default, for a note that names the values actually used.
    """
    hints = _resolved_types(cls)

    def decorate(fn: F) -> F:
        for f in reversed(dataclasses.fields(cls)):
            if not f.metadata.get("cli", True):
                continue
            fn = _option_for(f, hints[f.name], unset)(fn)
        return fn

    return decorate


def _shows_default(default: Any) -> bool:
    """``[default: ...]`` only for a value worth showing (0 and False are; None, () and "" are not)."""
    return default is not None and not (isinstance(default, (tuple, str)) and not default)


def _option_for(f: Field[Any], annotation: Any, unset: UnsetNote | None = None) -> Callable[[F], F]:
    meta = f.metadata
    long = flag_of(f)
    names = [*([meta["short"]] if meta.get("short") else []), long]  # click names errors by the first
    default = f.default if f.default is not dataclasses.MISSING else None
    kwargs: dict[str, Any] = {"help": meta.get("help", ""), "show_default": _shows_default(default)}
    if unset is not None:
        shown = (long[2:] if default else "no-" + long[2:]) if isinstance(default, bool) else default
        note = unset(f.name, shown) if callable(unset) else unset.format(default=shown)
        kwargs.update(help=f"{kwargs['help']}  {note}", show_default=False)
        default = None
    if meta.get("switch"):
        return click.option(*names, f.name, is_flag=True, default=False, help=kwargs["help"])
    if meta.get("required"):
        kwargs.update(required=True, show_default=False)
    if annotation is bool or annotation == "bool":
        decls = [f"{long}/--no-{long[2:]}", f.name]
        return click.option(*decls, default=default, **kwargs)
    kwargs.update(
        type=_click_type(annotation, meta.get("choices")),
        default=default,
        multiple=bool(meta.get("multiple")),
        metavar=meta.get("metavar"),
    )
    if meta.get("required"):
        del kwargs["default"]  # click (8.3+) counts an explicit default=None as a value and stops asking
    option = click.option(*names, f.name, **kwargs)
    aliases = tuple(meta.get("aliases") or ())
    if not aliases:
        return option

    def with_aliases(fn: F) -> F:
        fn = option(fn)
        for alias in aliases:  # old spellings: same destination, hidden from --help
            fn = click.option(
                alias,
                f.name,
                hidden=True,
                expose_value=True,
                **{k: v for k, v in kwargs.items() if k in ("type", "multiple")},
            )(fn)
        return fn

    return with_aliases


def options_from(cls: type[T], kwargs: dict[str, Any], **fixed: Any) -> T:
    """Pop ``cls``'s fields out of a click kwargs dict and build the options object.

    ``fixed`` supplies fields that are not on the command line (``cli=False``) or that the command
    decides itself. Multi-valued options arrive from click as tuples, which is what the fields hold.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    values.update(fixed)
    options = cls(**values)
    check_numbers(options)  # nan, inf and out-of-range numbers: one sentence naming the flag
    return options


def reproducible_command(command: list[str], options: Any, positional: tuple[str, ...] = ()) -> list[str]:
    """``command`` followed by every option of ``options`` spelled out, so a rerun needs no defaults.

    ``positional`` names fields that are arguments, written first and without a flag.
    """
    words = list(command)
    fields = dataclasses.fields(options)
    for f in fields:
        if f.name in positional:
            words.append(str(getattr(options, f.name)))
    for f in fields:
        value = getattr(options, f.name)
        if f.name in positional or not f.metadata.get("cli", True) or value is None:
            continue
        flag = flag_of(f)
        if isinstance(value, bool) and f.metadata.get("switch"):
            words += [flag] if value else []
        elif isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            for v in value:
                words += [flag, str(v)]
        else:
            words += [flag, str(value)]
    return words
