"""The ``surgery`` command: the top group only; every command lives in :mod:`surgery.commands`.

A command module is imported when the command is listed or invoked; command modules import the
library inside their command functions, so ``surgery --help`` stays instant and a missing optional
extra only affects the command that needs it. User errors (:class:`SurgeryError`) become one sentence
on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from typing import Any, NoReturn

import click

from . import __version__, install_hint
from .errors import MissingExtraError, OptionError, SurgeryError
from .progress import set_quiet
from .safetext import printable

#: command name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "check": "surgery.commands.core:check",
    "patch": "surgery.commands.core:patch",
    "inspect": "surgery.commands.core:inspect",
    "apply": "surgery.commands.core:apply",
    "eval": "surgery.commands.evaluate:eval_command",
    "calib": "surgery.commands.calib:calib",
    "pair": "surgery.commands.pair:pair",
    "demo": "surgery.commands.pair:demo",
    "export": "surgery.commands.export:export",
    "deploy": "surgery.commands.export:deploy",
    "probe": "surgery.commands.probe:probe",
    "bench": "surgery.commands.bench:bench",
    "convert": "surgery.commands.convert:convert",
}

#: third-party packages that come with the [onnx] extra (anything else missing is a [dev] one)
_ONNX_EXTRA = ("optimum", "onnx", "onnxruntime")


class LazyGroup(click.Group):
    """A group whose commands are imported by name from :data:`COMMANDS` when needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if not exc.name or exc.name.split(".")[0] == "surgery":
                raise
            missing = exc.name
            return click.Command(
                name, help=f"(unavailable: needs the '{missing}' package)", callback=lambda: _missing(name, missing)
            )

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SurgeryError as exc:  # one line, whatever a hostile file put into the names it quotes
            click.echo(f"error: {printable(exc)}", err=True)
            sys.exit(2)
        except UnicodeDecodeError as exc:  # a text file that is not UTF-8, where a reader did not name it
            click.echo(
                f"error: an input text file is not UTF-8 ({printable(exc.reason)} at byte {exc.start}); "
                "JSON, JSONL and pattern files must be UTF-8.",
                err=True,
            )
            sys.exit(2)
        except OSError as exc:  # a disk full, a folder gone, a permission changed mid-run: still one sentence
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"error: {printable(exc.strerror or exc)}{printable(where)}.", err=True)
            sys.exit(2)


def _missing(command: str, package: str) -> NoReturn:
    extra = "onnx" if package.split(".")[0] in _ONNX_EXTRA else "dev"
    raise MissingExtraError(f"'surgery {command}' needs {package}: install it with  {install_hint(extra)}.")


#: the exit code of a run ended by SIGTERM (128 + 15, what shells report)
SIGTERM_EXIT = 128 + signal.SIGTERM


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM (sent by ``timeout``, schedulers, containers) unwinds like Ctrl-C: the atomic writers' cleanup
    runs, so no temp file or folder is left. Further SIGTERMs are ignored while that cleanup runs."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stderr.write("error: terminated (SIGTERM); nothing half-written was left.\n")
    raise SystemExit(SIGTERM_EXIT)


def handle_sigterm(ctx: click.Context) -> None:
    """Install :func:`_terminated` for this invocation (main thread only) and restore the old handler after."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


def setup_logging(verbose: int, quiet: bool) -> None:
    """Logging and progress bars for this invocation; set every time, so one ``-q`` never outlives its call."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("transformers", "torch", "urllib3", "huggingface_hub", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    set_quiet(quiet)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # transformers missing is reported by the command that needs it
        pass


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="surgery")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings, errors and results; no progress bars.")
@click.option(
    "--threads",
    type=int,
    default=None,
    envvar="SURGERY_THREADS",
    help="Torch CPU threads (default: all cores, at most 8).",
)
def main(verbose: int, quiet: bool, threads: int | None) -> None:
    """Give a fine-tuned LLM back its "I don't know": honesty patches with HCNR."""
    if threads is not None and threads < 1:
        raise OptionError(f"--threads must be at least 1, got {threads}.")
    handle_sigterm(click.get_current_context())
    setup_logging(verbose, quiet)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    # for this invocation only: a program (or test session) calling main in-process keeps its own thread count,
    # which results may depend on (floating-point reductions are ordered by thread)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or max(1, min(8, os.cpu_count() or 1)))
    click.get_current_context().call_on_close(lambda: torch.set_num_threads(previous))


if __name__ == "__main__":  # pragma: no cover
    main()
