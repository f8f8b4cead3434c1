"""Every command's ``--help`` works and lists every option the command accepts; the top help lists them all."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from surgery.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_lists_its_options(name):
    result = CliRunner().invoke(main, [name, "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    command = main.get_command(click.Context(main), name)
    options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
    assert options, f"{name} declares no options"
    for option in options:
        assert option.opts[-1] in result.output, f"{name} --help does not list {option.opts}"


def test_top_help_lists_every_command_with_its_short_help():
    result = CliRunner().invoke(main, ["--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    commands = result.output.split("Commands:")[1]
    for name in COMMANDS:
        short = main.get_command(click.Context(main), name).get_short_help_str(limit=300)
        line = next(ln for ln in commands.splitlines() if ln.strip().startswith(name + " "))
        assert short and short.split()[0] in line


def test_command_modules_load_no_model_code():
    """Listing the commands (``surgery --help``) imports the command modules, never torch or the library."""
    modules = sorted({target.split(":")[0] for name, target in COMMANDS.items() if name not in ("export", "deploy")})
    code = (
        "import sys; import "
        + ", ".join(modules)
        + "; print(sorted(m for m in ('torch', 'transformers', 'numpy', 'surgery.probe.run', "
        "'surgery.hcnr.pipeline', 'surgery.evaluation.evaluate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_extra_is_one_sentence(monkeypatch, tmp_path):
    (tmp_path / "needs_extra_cmd.py").write_text("import onnxruntime_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "fake", "needs_extra_cmd:fake")
    listing = CliRunner().invoke(main, ["--help"], catch_exceptions=False)
    assert listing.exit_code == 0 and "fake" in listing.output
    result = CliRunner().invoke(main, ["fake"])
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message == (
        "error: 'surgery fake' needs onnxruntime_not_installed_xyz: install it with  pip install 'surgery-hcnr[dev]'."
    )
