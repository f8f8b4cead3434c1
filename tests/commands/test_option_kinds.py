"""The option kinds the commands need beyond plain values: on-only switches, required options, recipe overrides."""

from __future__ import annotations

from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from surgery.commands.options import ModelAccess, add_options, opt, options_from, reproducible_command, required, switch
from surgery.errors import OptionError
from surgery.evaluation.evaluate import run_eval


@dataclass(frozen=True)
class Demo:
    name: str = required("Who.", short="-n")
    seed: int = opt(0, "Seed.")
    fast: bool = opt(False, "Go fast.")
    verbose: bool = switch("Say more.", flag="--loud")


def _command(**add_kwargs: object) -> click.Command:
    @click.command()
    @add_options(Demo, **add_kwargs)
    def cmd(**kwargs: object) -> None:
        click.echo(repr(options_from(Demo, kwargs)) if not add_kwargs else repr(kwargs))

    return cmd


def test_switch_required_and_zero_default():
    runner = CliRunner()
    text = runner.invoke(_command(), ["--help"]).output
    assert "--loud " in text and "--no-loud" not in text  # an on-only switch has no --no- form
    assert "[default: 0]" in text  # a zero default is still shown
    assert "--fast / --no-fast" in text and "[default: no-fast]" in text
    assert "[required]" in text
    missing = runner.invoke(_command(), [])
    assert missing.exit_code == 2 and "Missing option" in missing.output
    ok = runner.invoke(_command(), ["-n", "x", "--loud"])
    assert "Demo(name='x', seed=0, fast=False, verbose=True)" in ok.output


def test_reproducible_command_writes_a_switch_only_when_on():
    assert reproducible_command(["surgery", "x"], ModelAccess()) == ["surgery", "x"]
    assert reproducible_command(["surgery", "x"], ModelAccess(allow_pickle=True)) == ["surgery", "x", "--allow-pickle"]


def test_unset_options_are_none_unless_given_and_say_where_the_value_comes_from():
    runner = CliRunner()
    text = runner.invoke(_command(unset="[default: elsewhere, else {default}]"), ["--help"]).output
    assert "[default: elsewhere, else 0]" in " ".join(text.split())
    out = runner.invoke(_command(unset="[default: elsewhere, else {default}]"), ["-n", "x", "--seed", "3"]).output
    assert "'seed': 3" in out and "'fast': None" in out


def test_eval_rejects_allow_pickle_for_onnx_before_loading_anything():
    with pytest.raises(OptionError, match="torch back-end only"):
        run_eval("no-such-model", backend="onnx", allow_pickle=True)
