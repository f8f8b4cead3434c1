"""Defects of the old CLI layer, each pinned by a test that failed before its fix."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from surgery import progress
from surgery.cli import main
from surgery.commands.core import PatchIO, patch_command
from surgery.commands.pair import DemoOptions
from surgery.hcnr.options import PatchOptions
from surgery.pair import demo as demo_module
from surgery.pair.demo import DemoConfig

RECIPE = Path(__file__).resolve().parents[2] / "surgery" / "recipes" / "smollm2" / "recipe.json"


def test_quiet_does_not_outlive_its_invocation(monkeypatch, tmp_path):
    """One ``surgery -q`` call used to set SURGERY_QUIET for the whole process: every later call was silent."""
    monkeypatch.delenv("SURGERY_QUIET", raising=False)
    monkeypatch.setattr(progress, "_quiet", False)  # restored after the test whatever happens
    missing = str(tmp_path / "no.patch")
    CliRunner().invoke(main, ["-q", "inspect", missing])
    assert progress.quiet()  # the -q invocation is quiet
    CliRunner().invoke(main, ["inspect", missing])
    assert not progress.quiet()
    assert "SURGERY_QUIET" not in os.environ


def _old_patch_command(sft, base, honesty_data, task_data, output, options) -> str:
    """``commands_core._patch_command`` as it was before the redesign: the reference for the file format."""
    args = ["surgery", "patch", sft] + (["--base", base] if base else [])
    args += ["--honesty-data", honesty_data, "--task-data", task_data, "-o", output]
    for key, value in options.to_dict().items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return shlex.join(args) + "\n"


@pytest.mark.parametrize("base", [None, "base model"])
def test_patch_command_file_is_unchanged(base):
    options = PatchOptions(r_iw=0.125, r_cw=0.8, compensation="protect", fisher_normalize=True, epsilon=1e-12)
    io = PatchIO(base=base, honesty_data="d hon.jsonl", task_data="d_task.jsonl", output="out.safetensors")
    expected = _old_patch_command("sft", base, "d hon.jsonl", "d_task.jsonl", "out.safetensors", options)
    assert patch_command("sft", io, options) == expected


def _option_help(text: str, flag: str) -> str:
    """The help paragraph of one option in ``--help`` output, whitespace collapsed."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith(flag + " "))
    block = [lines[start]]
    for ln in lines[start + 1 :]:
        if ln.strip().startswith("-"):
            break
        block.append(ln)
    return " ".join(" ".join(block).split())


def test_demo_help_shows_the_values_the_demo_uses():
    """``demo --help`` used to claim ``surgery patch``'s defaults, while the demo runs the recipe's patch."""
    text = CliRunner().invoke(main, ["demo", "--help"], catch_exceptions=False).output
    recipe_patch = json.loads(RECIPE.read_text())["patch"]
    assert recipe_patch  # the recipe sets patch options, so the bare defaults would be wrong
    for key in recipe_patch:
        help_text = _option_help(text, "--" + key.replace("_", "-"))
        default = getattr(PatchOptions(), key)
        assert f"[default: {default}]" not in help_text
        assert "recipe" in help_text
    config = DemoConfig(work_dir=Path("."))
    options = DemoOptions()
    assert (options.recipe, options.limit) == (config.recipe, config.limit)
    assert options.benchmarks == config.benchmarks


def test_demo_passes_only_the_patch_options_given(monkeypatch, tmp_path):
    seen = {}

    def fake_run_demo(cfg: DemoConfig) -> dict:
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(demo_module, "run_demo", fake_run_demo)
    monkeypatch.setattr(demo_module, "format_table", lambda summary: "table")
    args = ["demo", "--work-dir", str(tmp_path), "--no-export"]
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    assert seen["cfg"].patch_options == {} and seen["cfg"].export is False
    CliRunner().invoke(main, [*args, "--r-iw", "0.3", "--no-fisher-normalize"], catch_exceptions=False)
    assert seen["cfg"].patch_options == {"r_iw": 0.3, "fisher_normalize": False}
    assert seen["cfg"].task_limit == seen["cfg"].limit == DemoOptions().limit
    assert dataclasses.is_dataclass(seen["cfg"])
