"""One option vocabulary across every command (issue 15, item 7): the same names for the same things.

Walks every command of ``surgery.cli.main`` by click introspection, so a new command or option that
spells a shared thing its own way fails here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from surgery.cli import COMMANDS, main
from surgery.commands.core import ApplyOptions
from surgery.commands.options import (
    AliasedOption,
    add_options,
    emit_json,
    json_output,
    json_stdout,
    options_from,
    split_commas,
    threads_option,
)
from surgery.options import parse_size
from surgery.patchfile import PatchManifest, make_entry, write_patch

#: commands that run a model on a device of the user's choosing
HEAVY = {"patch", "eval", "calib", "probe", "bench", "demo"}
#: commands that read or write whole models: CPU threads matter to all of them
MODEL_COMMANDS = HEAVY | {"check", "apply", "pair", "export", "deploy"}
#: old spellings: never shown in --help, still parsed (for one release) where they existed
OLD_SPELLINGS = {
    "calib": {"--out-dir", "--task"},
    "bench": {"--out", "--hon-data"},
    "export": {"--out"},
    "deploy": {"--out"},
    "demo": {"--benchmarks"},
}
#: the one long name each shared short name stands for, on every command that has it
SHORT_TO_LONG = {"-o": "--output", "-b": "--benchmark", "-t": "--task-benchmark"}


def _command(name: str) -> click.Command:
    command = main.get_command(click.Context(main), name)
    assert command is not None
    return command


def _options(name: str) -> list[click.Option]:
    return [p for p in _command(name).params if isinstance(p, click.Option)]


def _visible(option: click.Option) -> list[str]:
    """The names ``--help`` shows for ``option`` (hidden aliases left out)."""
    if option.hidden:
        return []
    names = option.visible_opts if isinstance(option, AliasedOption) else list(option.opts)
    return [*names, *option.secondary_opts]


def _by_name(name: str) -> dict[str, click.Option]:
    return {n: o for o in _options(name) for n in _visible(o)}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_no_visible_old_spelling(name):
    old = set().union(*OLD_SPELLINGS.values()) | {"--hon-data", "--out-dir", "--benchmarks", "--out"}
    shown = {n for o in _options(name) for n in _visible(o)}
    assert not shown & old, f"{name} shows old spellings {shown & old}"
    help_text = CliRunner().invoke(main, [name, "--help"], catch_exceptions=False).output
    for word in old:
        assert f"{word} " not in help_text and f"{word}," not in help_text, f"{name} --help shows {word}"


@pytest.mark.parametrize("name", sorted(OLD_SPELLINGS))
def test_old_spellings_still_parse_as_hidden_aliases(name):
    every = {n for o in _options(name) for n in o.opts}
    assert OLD_SPELLINGS[name] <= every, f"{name} lost the aliases {OLD_SPELLINGS[name] - every}"


def test_short_names_mean_the_same_long_name_everywhere():
    seen: dict[str, set[str]] = defaultdict(set)
    for name in COMMANDS:
        for option in _options(name):
            names = _visible(option)
            shorts = [n for n in names if n.startswith("-") and not n.startswith("--")]
            longs = [n for n in names if n.startswith("--")]
            for short in shorts:
                seen[short].update(longs[:1])
    for short, longs in seen.items():
        assert len(longs) == 1, f"{short} stands for {sorted(longs)} on different commands"
    for short, long in SHORT_TO_LONG.items():
        assert seen[short] == {long}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shared_things_have_one_shape(name):
    options = _by_name(name)
    if "-o" in options:
        assert "--output" in _visible(options["-o"])
    for long in ("--benchmark", "--task-benchmark"):
        if long in options:
            assert options[long].multiple, f"{name} {long} is not repeatable"
    for long in ("--honesty-data", "--task-data"):
        if long in options:
            assert options[long].metavar == "FILE"
    assert not any(n.endswith("-dir") and n.startswith("--out") for n in options), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_results_command_takes_json_path(name):
    options = _by_name(name)
    assert "--json" in options, f"{name} has no --json PATH"
    assert not options["--json"].is_flag, f"{name} --json is a bare flag"
    assert options["--json"].metavar == "PATH"


@pytest.mark.parametrize("name", sorted(MODEL_COMMANDS))
def test_model_commands_take_threads_and_heavy_ones_device_and_dtype(name):
    options = _by_name(name)
    assert "--threads" in options, f"{name} has no --threads"
    if name in HEAVY:
        assert {"--device", "--dtype"} <= set(options), f"{name} lacks --device/--dtype"


def test_renamed_options_parse_into_the_same_values():
    bench = _command("bench")
    old = bench.make_context("bench", ["--base", "b", "--sft", "s", "--out", "d", "--hon-data", "h.jsonl"])
    new = bench.make_context("bench", ["--base", "b", "--sft", "s", "--output", "d", "--honesty-data", "h.jsonl"])
    assert old.params == new.params and str(new.params["out_dir"]) == "d" and str(new.params["hon_data"]) == "h.jsonl"
    calib = _command("calib")
    old = calib.make_context("calib", ["--out-dir", "c", "--task", "nq_open,qa_wikidata"])
    new = calib.make_context("calib", ["-o", "c", "-t", "nq_open", "-t", "qa_wikidata"])
    assert old.params["out_dir"] == new.params["out_dir"] == "c"
    assert split_commas(old.params["task_benchmarks"]) == new.params["task_benchmarks"] == ("nq_open", "qa_wikidata")
    demo = _command("demo").make_context("demo", ["--benchmarks", "selfaware,falseqa"])
    assert split_commas(demo.params["benchmarks"]) == ("selfaware", "falseqa")
    export = _command("export")
    assert export.make_context("export", ["m", "--out", "x"]).params["out"] == Path("x")


def test_a_missing_required_option_is_named_without_its_aliases():
    result = CliRunner().invoke(main, ["calib"])
    assert result.exit_code == 2
    assert "'-o' / '--output'" in result.output and "--out-dir" not in result.output


def _json_command() -> click.Command:
    @dataclasses.dataclass(frozen=True)
    class Opts:
        json_out: str | None = json_output()

    @click.command()
    @add_options(Opts)
    @threads_option
    @json_stdout()
    def cmd(**kwargs: object) -> None:
        o = options_from(Opts, dict(kwargs))
        click.echo(f"threads {torch.get_num_threads()}")
        if o.json_out:
            click.echo(f"wrote {emit_json(o.json_out, {'a': 1})}")

    return cmd


def test_json_dash_puts_only_the_json_on_stdout_and_the_text_on_stderr(tmp_path):
    result = CliRunner().invoke(_json_command(), ["--json", "-"], catch_exceptions=False)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"a": 1}
    assert "wrote stdout" in result.stderr
    result = CliRunner().invoke(_json_command(), ["--json", str(tmp_path / "r.json")], catch_exceptions=False)
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1} and "wrote" in result.stdout


def test_threads_after_the_command_apply_for_that_run_only():
    before = torch.get_num_threads()
    want = 2 if before != 2 else 1
    result = CliRunner().invoke(_json_command(), ["--threads", str(want)], catch_exceptions=False)
    assert f"threads {want}" in result.stdout
    assert torch.get_num_threads() == before
    bad = CliRunner().invoke(_json_command(), ["--threads", "0"])
    assert bad.exit_code == 2 and "at least 1" in bad.output


def test_check_refuses_threads_zero_after_the_command():
    result = CliRunner().invoke(main, ["check", "sft", "--base", "b", "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output


def test_inspect_json_to_stdout_file_and_the_old_bare_flag(tmp_path):
    manifest = PatchManifest(
        tool="surgery", tool_version="0", method="HCNR", base="b", sft="s", options={}, calibration={}
    )
    entry = make_entry("layers.0.w", torch.ones(4, 8), torch.zeros(4, 8), torch.tensor([1]), "cols", False)
    patch = tmp_path / "p.safetensors"
    write_patch(patch, [entry], manifest)
    runner = CliRunner()
    dash = runner.invoke(main, ["-q", "inspect", str(patch), "--json", "-"], catch_exceptions=False)
    bare = runner.invoke(main, ["-q", "inspect", str(patch), "--json"], catch_exceptions=False)
    old_form = runner.invoke(main, ["-q", "inspect", "--json", str(patch)], catch_exceptions=False)
    assert dash.exit_code == bare.exit_code == old_form.exit_code == 0
    assert json.loads(dash.stdout)["sft"] == "s"
    assert dash.stdout == bare.stdout == old_form.stdout
    to_file = runner.invoke(main, ["-q", "inspect", str(patch), "--json", str(tmp_path / "m.json")])
    assert to_file.exit_code == 0 and "surgery patch" in to_file.stdout
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(dash.stdout)


def test_shard_sizes_take_units_and_a_plain_number_warns(caplog):
    assert ApplyOptions(output="x").shard_bytes() == 2 * 1024**3  # the default is unchanged: 2 GiB
    with caplog.at_level(logging.WARNING):
        assert parse_size("5GB", "--max-shard-size", warn_plain=True) == 5 * 10**9
        assert parse_size("2GiB", "--max-shard-size", warn_plain=True) == 2 * 1024**3
        assert not caplog.records
        assert parse_size("2", "--max-shard-size", warn_plain=True) == 2 * 1024**3
    assert any("GiB" in r.getMessage() and "unit" in r.getMessage() for r in caplog.records)


def test_demo_passes_device_and_dtype_to_every_stage_and_not_as_patch_options(monkeypatch, tmp_path):
    import surgery.pair.demo as demo_module

    seen = {}
    monkeypatch.setattr(demo_module, "run_demo", lambda cfg: seen.setdefault("cfg", cfg) and {})
    monkeypatch.setattr(demo_module, "format_table", lambda summary: "table")
    args = ["demo", "--work-dir", str(tmp_path), "--no-export", "--device", "cpu", "--dtype", "bfloat16"]
    result = CliRunner().invoke(main, [*args, "-b", "selfaware", "--json", "-"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.device, cfg.dtype, cfg.patch_options, cfg.benchmarks) == ("cpu", "bfloat16", {}, ("selfaware",))
    assert json.loads(result.stdout) == {} and "table" in result.stderr


def test_probe_runs_once_per_repeated_benchmark(monkeypatch, tmp_path):
    import surgery.probe.report as report
    import surgery.probe.run as run

    calls = []

    def fake_run_probe(sft, base, *, benchmark, **kw):
        calls.append(benchmark)
        return {
            "benchmark": benchmark,
            "precision": {"device": "cpu", "dtype": "float32"},
            "seconds": {"total": 1.0},
            "verdict": {"line": f"verdict {benchmark}"},
        }

    monkeypatch.setattr(run, "run_probe", fake_run_probe)
    monkeypatch.setattr(report, "curves_from_record", lambda record: record["benchmark"])
    monkeypatch.setattr(report, "format_table", lambda curves: f"table {curves}")
    args = ["probe", "sft", "--base", "base", "-b", "selfaware", "-b", "falseqa", "--json", "-"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert calls == ["selfaware", "falseqa"]
    assert set(json.loads(result.stdout)["benchmarks"]) == {"selfaware", "falseqa"}
    assert "verdict falseqa" in result.stderr
    one = CliRunner().invoke(main, ["probe", "sft", "--base", "base", "--json", "-"], catch_exceptions=False)
    assert json.loads(one.stdout)["benchmark"] == "selfaware"  # one benchmark: its record, as before
    plot = CliRunner().invoke(main, [*args[:-2], "--plot", str(tmp_path / "p.png")])
    assert plot.exit_code == 2 and "--plot" in plot.output
