"""Options dataclasses -> click options: the one way every command declares what it accepts.

A command's options are a frozen dataclass whose fields are declared with :func:`surgery.options.opt`
(mergekit-style). The library takes the dataclass; the CLI gets one click option per field from
:func:`add_options` and rebuilds the dataclass with :func:`options_from`. So a knob has one name, one
default and one help text everywhere: CLI, library call, and the manifest that records it.

Field metadata: see :mod:`surgery.options`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import Field
from pathlib import Path
from typing import Any, TypeVar

import click

from ..atomic import write_json_atomic
from ..options import check_numbers, flag_of, opt

__all__ = [
    "AliasedOption",
    "ModelAccess",
    "add_options",
    "benchmark_choice",
    "emit_json",
    "flag_of",
    "honesty_data",
    "json_output",
    "json_stdout",
    "opt",
    "options_from",
    "output",
    "reproducible_command",
    "required",
    "split_commas",
    "switch",
    "task_benchmark_choice",
    "task_data",
    "threads_option",
]

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


def _maybe_required(required_: bool, default: Any, help: str, **kwargs: Any) -> Any:
    return required(help, **kwargs) if required_ else opt(default, help, **kwargs)


# -- the shared vocabulary: one spelling per thing, on every command (tests/commands/test_vocabulary.py) --
#: the spellings every command uses for the same thing; old ones are hidden aliases for one release
OUTPUT = ("-o", "--output")
JSON = "--json"
BENCHMARK = ("-b", "--benchmark")
TASK_BENCHMARK = ("-t", "--task-benchmark")
HONESTY_DATA = "--honesty-data"
TASK_DATA = "--task-data"


def output(help: str, *, metavar: str = "PATH", aliases: tuple[str, ...] = (), is_required: bool = True) -> Any:
    """``-o/--output``: where a command writes its main output (a file or a folder, as ``help`` says)."""
    return _maybe_required(is_required, None, help, flag=OUTPUT[1], short=OUTPUT[0], metavar=metavar, aliases=aliases)


def json_output(help: str = "Write the results as JSON to PATH ('-' for stdout).", *, bare: bool = False) -> Any:
    """``--json PATH``: the command's results as JSON; ``-`` prints them on stdout (the text goes to stderr).

    ``bare``: a ``--json`` given without a value means stdout (``inspect``'s old flag form)."""
    f = opt(None, help, flag=JSON, metavar="PATH")
    return dataclasses.field(default=None, metadata={**f.metadata, "flag_value": "-" if bare else None})


def _repeatable_benchmark(flags: tuple[str, str], help: str, default: tuple[str, ...], aliases: tuple[str, ...]) -> Any:
    return opt(default, help, flag=flags[1], short=flags[0], multiple=True, metavar="NAME|FILE.jsonl", aliases=aliases)


def benchmark_choice(help: str, default: tuple[str, ...] = (), *, aliases: tuple[str, ...] = ()) -> Any:
    """``-b/--benchmark NAME|FILE.jsonl``, repeatable: the honesty benchmarks a command scores on."""
    return _repeatable_benchmark(BENCHMARK, help, default, aliases)


def task_benchmark_choice(help: str, default: tuple[str, ...] = (), *, aliases: tuple[str, ...] = ()) -> Any:
    """``-t/--task-benchmark NAME|FILE.jsonl``, repeatable: the SFT-task benchmarks."""
    return _repeatable_benchmark(TASK_BENCHMARK, help, default, aliases)


def honesty_data(
    help: str, *, is_required: bool = False, default: str | None = None, aliases: tuple[str, ...] = ()
) -> Any:
    """``--honesty-data FILE``: the honesty calibration set (D_hon)."""
    return _maybe_required(is_required, default, help, flag=HONESTY_DATA, metavar="FILE", aliases=aliases)


def task_data(help: str, *, is_required: bool = False, aliases: tuple[str, ...] = ()) -> Any:
    """``--task-data FILE``: the SFT-task calibration set (D_task)."""
    return _maybe_required(is_required, None, help, flag=TASK_DATA, metavar="FILE", aliases=aliases)


def split_commas(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeated values, each also split on commas: the old comma-list spelling (``--benchmarks a,b``) still works."""
    return tuple(part.strip() for v in values for part in str(v).split(",") if part.strip())


class AliasedOption(click.Option):
    """A click option with old spellings that still parse but are hidden from ``--help`` and error hints."""

    def __init__(self, *args: Any, hidden_names: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_names = tuple(hidden_names)

    @property
    def visible_opts(self) -> list[str]:
        """The names ``--help`` shows (the aliases left out)."""
        return [o for o in self.opts if o not in self.hidden_names]

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        every = self.opts
        self.opts = self.visible_opts
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = every

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return " / ".join(f"'{o}'" for o in self.visible_opts)


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    """``--threads N`` after the command name: torch CPU threads for this invocation (restored after)."""
    if value is None:
        return
    if value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}.", ctx=ctx, param=param)
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(value)
    ctx.call_on_close(lambda: torch.set_num_threads(previous))


def threads_option(fn: F) -> F:
    """``--threads N`` on a command that runs a model (the same option the top group takes before the command)."""
    return click.option(
        "--threads",
        type=int,
        default=None,
        expose_value=False,
        callback=_set_threads,
        help="Torch CPU threads [default: $SURGERY_THREADS, else all cores, at most 8].",
    )(fn)


def json_stdout(name: str = "json_out") -> Callable[[F], F]:
    """Decorate a command whose ``--json`` (its parameter ``name``) may be ``-``: its human-readable lines go to
    stderr then, so that stdout holds only the JSON that :func:`emit_json` writes."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get(name) != "-":
                return fn(*args, **kwargs)
            ctx = click.get_current_context()
            ctx.meta["surgery.stdout"] = sys.stdout
            with contextlib.redirect_stdout(sys.stderr):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def emit_json(path: str | Path, data: Any, **dump: Any) -> str:
    """Write ``data`` as JSON to ``path`` atomically (``dump``: :func:`json.dumps` options, default indent=2),
    or to stdout for ``-``; returns where it went, for the ``wrote ...`` line."""
    if str(path) != "-":
        return str(write_json_atomic(path, data, **dump))
    ctx = click.get_current_context(silent=True)
    stream: Any = ctx.meta.get("surgery.stdout", sys.stdout) if ctx else sys.stdout
    stream.write(json.dumps(data, **({"indent": 2} | dump)) + "\n")
    stream.flush()
    return "stdout"


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
        hidden = tuple(meta.get("aliases") or ())
        return click.option(
            *names[:-1],
            *hidden,
            long,
            f.name,
            cls=AliasedOption,
            hidden_names=hidden,
            is_flag=True,
            default=False,
            help=kwargs["help"],
        )
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
    if meta.get("flag_value"):  # ``--json`` alone: the value it stands for
        kwargs.update(is_flag=False, flag_value=meta["flag_value"])
    if meta.get("required"):
        del kwargs["default"]  # click (8.3+) counts an explicit default=None as a value and stops asking
    aliases = tuple(meta.get("aliases") or ())
    # aliases before the long name: opts[-1] stays the name --help shows
    return click.option(*names[:-1], *aliases, long, f.name, cls=AliasedOption, hidden_names=aliases, **kwargs)


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
