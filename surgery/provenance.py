"""The one place that records how an output was made: the command line and the library versions.

Results, patches and exports carry this so that anyone holding the file can rerun what made it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__

#: program names under which ``sys.argv`` is a ``surgery`` invocation
_ENTRY_POINTS = ("surgery", "cli.py", "__main__.py")


def command_line(argv: list[str] | None = None) -> str | None:
    """The shell command that ran this process as ``surgery ...``; None inside a library call.

    A library caller (a notebook, a test) has an argv that does not reproduce anything, so recording
    it would mislead.
    """
    argv = sys.argv if argv is None else argv
    if not argv or Path(argv[0]).name not in _ENTRY_POINTS:
        return None
    return shlex.join(["surgery", *argv[1:]])


def script_command(module: str, argv: Sequence[str] | None = None) -> str:
    """The shell command that ran this process as ``python -m <module> ...`` (a ``benchmarks/`` script).

    ``sys.argv[0]`` is the script's absolute path on this machine, which reproduces nothing elsewhere;
    the module name does, and ``shlex.join`` quotes each argument so the line can be pasted back.
    """
    argv = sys.argv if argv is None else argv
    return shlex.join(["python", "-m", module, *argv[1:]])


def versions(*packages: str) -> dict[str, str | None]:
    """Versions of python, surgery and the named distributions (None when one is not installed)."""
    names = ("torch", "transformers", "safetensors", *packages)
    out: dict[str, str | None] = {"python": platform.python_version()}
    out["surgery"] = __version__
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
