"""``surgery check``, ``patch``, ``inspect`` and ``apply``: thin wrappers over the core library."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..devices import DeviceOptions
from ..hcnr.options import ComputeOptions, PatchOptions
from ..hcnr.presets import (
    CLI_PRESET,
    PRESET_KEY,
    PRESET_NOTES,
    PRESETS,
    ResolvedOptions,
    differing_values,
    resolve_options,
)
from ..hub import CardOptions, PushOptions, check_can_push
from ..options import check_numbers, parse_size
from .options import (
    ModelAccess,
    add_options,
    emit_json,
    honesty_data,
    json_output,
    json_stdout,
    opt,
    options_from,
    output,
    reproducible_command,
    required,
    switch,
    task_data,
    threads_option,
)

if TYPE_CHECKING:  # the library is imported lazily, so that `surgery --help` stays instant
    from ..patchfile import PatchManifest

#: what ``surgery patch --help`` says of --preset: each preset and what it is for
PRESET_HELP = (
    "Starting values of the method options: "
    + "; ".join(f"{name}: {note}" for name, note in PRESET_NOTES.items())
    + f". Options given here or in --config override it.  [default: {CLI_PRESET}]"
)


@dataclass(frozen=True)
class CheckOptions:
    base: str = required("The model before fine-tuning (folder or cached hub id).")
    top: int = opt(10, "How many of the most-moved matrices to list.", low=0)
    json_out: str | None = json_output("Write the full report as JSON to PATH ('-' for stdout).")


@dataclass(frozen=True)
class PatchIO:
    """What ``surgery patch`` reads and writes; the method's knobs are :class:`PatchOptions`."""

    base: str | None = opt(None, "The model before fine-tuning (default: an adapter's own base).")
    honesty_data: str = honesty_data(
        "JSONL of honesty calibration examples (D_hon); 'bundled' is the set shipped with surgery.", default="bundled"
    )
    task_data: str = task_data("JSONL of SFT-task calibration examples (D_task).", is_required=True)
    output: str = output("Patch file to write.", metavar="FILE")
    json_out: str | None = json_output("Write the run's report as JSON to PATH ('-' for stdout).")
    preset: str | None = opt(None, PRESET_HELP, choices=tuple(PRESETS))
    config: str | None = opt(
        None,
        "YAML or JSON file of method options (and a preset), e.g. the <patch>.config.yaml a run writes; "
        "options given on the command line override it.",
        metavar="FILE",
    )
    encoding: str = opt(
        "full",
        "How the patch stores new values: full (model dtype), or the change against SFT in bf16 or int8 "
        "(per-column scales); docs/encodings.md.",
        choices=("full", "bf16", "int8"),
    )
    plan: bool = switch("Print the run's estimated peak memory, work-folder disk and arithmetic, and exit.")
    keep_work: bool = switch("Keep <patch>.work/ (cached block inputs and parts) after success.")


@dataclass(frozen=True)
class InspectOptions:
    as_json: str | None = json_output("Write the manifest as JSON to PATH ('-' or no value: stdout).", bare=True)


@dataclass(frozen=True)
class ApplyOptions:
    output: str = output("Folder to write.", metavar="DIRECTORY")
    base: str | None = opt(None, "Base of SFT when SFT is a PEFT adapter without a usable base path.")
    max_shard_size: str = opt("2GiB", "Largest weight shard, as Hugging Face writes it: 500MB, 5GB.", metavar="SIZE")
    json_out: str | None = json_output("Write what was applied as JSON to PATH ('-' for stdout).")

    def __post_init__(self) -> None:
        """A bad size is refused while parsing, before any model is read."""
        parse_size(self.max_shard_size, "--max-shard-size")

    def shard_bytes(self) -> int:
        """``--max-shard-size`` in bytes (a plain number is still GiB, with a warning: the old spelling)."""
        return parse_size(self.max_shard_size, "--max-shard-size", warn_plain=True)


def patch_command(
    sft: str, io: PatchIO, options: PatchOptions, dtype: str = "float32", preset: str | None = None
) -> str:
    """The exact command that reproduces a patch, every option spelled out (written beside the patch).

    The device is the machine's business; the dtype changes the numbers, so it is kept when not float32.
    The preset is named only for the manifest's record: every option it set is spelled out anyway."""
    words = ["surgery", "patch", sft] + (["--base", io.base] if io.base else [])
    words += ["--honesty-data", io.honesty_data, "--task-data", io.task_data, "-o", io.output]
    words += ["--preset", preset] if preset else []
    words += ["--dtype", dtype] if dtype != "float32" else []
    words += ["--encoding", io.encoding] if io.encoding != "full" else []
    return shlex.join(reproducible_command(words, options)) + "\n"


def fmt_params(n: int) -> str:
    """A parameter count as people say it (1.23M)."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


#: the file beside a patch holding the options it was made with (``--config`` reads it back)
CONFIG_SUFFIX = ".config.yaml"


def _preset_note(name: str, default: Any) -> str:
    """The ``--help`` note of a method option: the value each preset gives it, when the presets differ."""
    values = differing_values(name)
    if not values:
        return f"[default: {default}]"
    others = ", ".join(f"{p} {v}" for p, v in values.items() if p != CLI_PRESET)
    return f"[default: {values[CLI_PRESET]} (--preset {CLI_PRESET}); {others}]"


@click.command(short_help="Pre-flight: same architecture? where did SFT move the model?")
@click.argument("sft")
@add_options(CheckOptions)
@add_options(ModelAccess)
@threads_option
@json_stdout()
def check(sft: str, **kwargs: Any) -> None:
    """Pre-flight: same architecture? Where did SFT move the model?"""
    from ..check import check_pair
    from ..modelio import locate
    from ..outputs import refuse_input_overlap, refuse_unwritable

    o = options_from(CheckOptions, kwargs)
    access = options_from(ModelAccess, kwargs)
    if o.json_out:
        refuse_unwritable(o.json_out, flag="--json")
        refuse_input_overlap(o.json_out, (sft, o.base), flag="--json")
    report = check_pair(locate(o.base), locate(sft, o.base), allow_pickle=access.allow_pickle)
    click.echo(f"architecture      {report.model_type} (base and SFT agree)")
    click.echo(f"tensors           {report.tensors}, of which {report.linear_matrices} block linear matrices")
    click.echo(f"moved matrices    {report.moved_matrices} / {report.linear_matrices}")
    click.echo(f"params changed    {100 * report.share_params_changed:.1f}% of all entries")
    click.echo("most moved (‖W1−W0‖/‖W0‖):")
    for name, v in sorted(report.matrix_change.items(), key=lambda kv: -kv[1])[: o.top]:
        click.echo(f"  {v:9.5f}  {name}")
    for w in report.warnings:
        click.echo(f"warning: {w}")
    if o.json_out:
        emit_json(o.json_out, report.to_dict())
    if report.moved_matrices == 0:
        sys.exit(1)


@click.command(short_help="Compute an HCNR honesty patch (sparse safetensors).")
@click.argument("sft")
@add_options(PatchIO)
@add_options(ModelAccess)
@add_options(DeviceOptions)
@threads_option
@add_options(PatchOptions, unset=_preset_note)
@add_options(PushOptions)
@json_stdout()
def patch(sft: str, **kwargs: Any) -> None:
    """Compute an HCNR honesty patch for SFT (a sparse safetensors file).

    The method options start from --preset (recommended unless named), then --config, then the
    options given here. The options used are written beside the patch as <patch>.config.yaml:
    --config with that file repeats the run.
    """
    from ..atomic import write_text_atomic
    from ..data.honesty_set import resolve_honesty_data
    from ..hcnr.pipeline import make_patch

    io = options_from(PatchIO, kwargs)
    access = options_from(ModelAccess, kwargs)
    resolved = _resolve_options(io, kwargs)
    options = resolved.options
    placement = options_from(DeviceOptions, kwargs)
    push = options_from(PushOptions, kwargs)
    check_can_push(push.push_to_hub)
    compute = ComputeOptions(placement.device, placement.dtype, io.keep_work)
    honesty = str(resolve_honesty_data(io.honesty_data))
    if io.plan:
        _print_plan(sft, replace(io, honesty_data=honesty), options, compute, access)
        return
    _check_patch_outputs(sft, replace(io, honesty_data=honesty))
    report = make_patch(
        sft,
        io.base,
        honesty,
        io.task_data,
        io.output,
        options,
        trust_remote_code=access.trust_remote_code,
        allow_pickle=access.allow_pickle,
        compute=compute,
        preset=resolved.preset,
        encoding=io.encoding,
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 writes and speaks
        return
    write_text_atomic(io.output + ".command.txt", patch_command(sft, io, options, compute.dtype, resolved.preset))
    write_text_atomic(io.output + CONFIG_SUFFIX, _config_text(sft, io, resolved, compute.dtype))
    encoded = f", {io.encoding}" if io.encoding != "full" else ""
    click.echo(f"wrote {io.output} ({report.patch_bytes / 1e6:.2f} MB{encoded})")
    click.echo(
        f"  parameters changed  {fmt_params(report.parameters_changed)} "
        f"({100 * report.share_of_linear:.1f}% of linear, {100 * report.share_of_model:.1f}% of model)"
    )
    click.echo(f"  matrices touched    {report.matrices_touched} / {report.matrices_total}")
    if report.residual_ratio is not None:
        click.echo(f"  output drift left   {100 * report.residual_ratio:.1f}% of SFT's (calibration inputs)")
    click.echo(
        "  time  "
        + "  ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
        + f"  | peak RSS {report.peak_rss_mb:.0f} MB"
    )
    if report.fallbacks:
        click.echo(f"  fallback to restore-only: {', '.join(report.fallbacks)}")
    if io.json_out:
        emit_json(io.json_out, report.to_dict(), sort_keys=True)
    if push.push_to_hub:
        _push_patch(io.output, push)


def _push_patch(output: str, push: PushOptions) -> None:
    """The patch with its report and command, in one commit to the repository (names as written here)."""
    from ..hub import push as push_files

    files = [Path(output + suffix) for suffix in ("", ".report.json", ".command.txt", CONFIG_SUFFIX)]
    url = push_files(
        str(push.push_to_hub),
        Path(output).parent,
        files=[f for f in files if f.is_file()],
        commit_message=f"surgery patch: {Path(output).name}",
        private=push.private,
    )
    click.echo(f"pushed {output} to {url}")


def _resolve_options(io: PatchIO, kwargs: dict[str, Any]) -> ResolvedOptions:
    """The method options: those given here over --config over --preset over the defaults (popped from kwargs)."""
    from ..option_file import load_option_file

    explicit = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(PatchOptions) if f.name in kwargs}
    config = load_option_file(io.config, PatchOptions, extra_keys=(PRESET_KEY,)) if io.config else {}
    resolved = resolve_options(io.preset, config, explicit)
    check_numbers(resolved.options)  # bounds declared on the fields, as options_from checks them
    return resolved


def _config_text(sft: str, io: PatchIO, resolved: ResolvedOptions, dtype: str) -> str:
    """``<patch>.config.yaml``: the preset and every option the patch was made with, under the command
    that repeats the run with it."""
    from ..option_file import dump_options

    rerun = ["surgery", "patch", sft, *(["--base", io.base] if io.base else [])]
    rerun += ["--honesty-data", io.honesty_data, "--task-data", io.task_data, "-o", io.output]
    rerun += ["--dtype", dtype] if dtype != "float32" else []
    rerun += ["--config", io.output + CONFIG_SUFFIX]
    header = f"surgery patch options of {Path(io.output).name}; repeat the run with:\n  {shlex.join(rerun)}"
    return dump_options(resolved.to_config(), header)


def _print_plan(sft: str, io: PatchIO, options: PatchOptions, compute: ComputeOptions, access: ModelAccess) -> None:
    from ..hcnr.pipeline import plan_patch

    plan = plan_patch(
        sft,
        io.base,
        io.honesty_data,
        io.task_data,
        options,
        trust_remote_code=access.trust_remote_code,
        compute=compute,
    )
    click.echo("\n".join(plan.lines()))


def _check_patch_outputs(sft: str, io: PatchIO) -> None:
    """Before any work: the patch and its command file go neither over an input nor where nothing can be written."""
    from ..outputs import check_outputs, refuse_input_overlap, refuse_unwritable

    inputs = (sft, io.base, io.honesty_data, io.task_data)
    for path in (io.output, io.output + ".report.json", io.output + ".command.txt", io.output + CONFIG_SUFFIX):
        refuse_unwritable(path, flag="-o")
        # the config a rerun reads may be the one it rewrites (read first, rewritten with the same options)
        refuse_input_overlap(path, inputs if path.endswith(CONFIG_SUFFIX) else (*inputs, io.config), flag="-o")
    check_outputs(inputs, files=(("--json", io.json_out),))


def manifest_lines(m: PatchManifest) -> list[str]:
    """What ``surgery inspect`` prints about a :class:`~surgery.patchfile.PatchManifest` (not yet sanitised)."""
    from ..revision import describe

    lines = [
        f"surgery patch v{m.tool_version} ({m.method})",
        f"  base   {m.base}",
        f"  sft    {m.sft}",
        *([f"  preset {m.preset}"] if m.preset else []),
        *(f"  {role:6} revision {describe(rev)}" for role, rev in sorted((m.revisions or {}).items())),
        f"  tensors touched     {len(m.tensors)}",
    ]
    if m.encoding != "full":
        lines.append(f"  encoding            {m.encoding} (change against the SFT weights)")
    s = m.stats
    if s is not None:
        lines.append(
            f"  parameters changed  {fmt_params(s.parameters_changed)} "
            f"({100 * s.share_of_linear:.1f}% of linear, {100 * s.share_of_model:.1f}% of model)"
        )
        if s.fallbacks:
            lines.append(f"  fallbacks           {', '.join(s.fallbacks)}")
    lines.append("  options  " + " ".join(f"{k}={v}" for k, v in sorted(m.options.items())))
    for key, fp in m.calibration.items():
        lines.append(f"  {key:6} data {fp['file']}  sha256 {fp['sha256'][:16]}…  {fp['bytes']} bytes")
    return lines


@click.command(short_help="Show what a patch changes, for which models, made how.")
@click.argument("patch_file", type=click.Path(dir_okay=False), required=False)
@add_options(InspectOptions)
@json_stdout("as_json")
def inspect(patch_file: str | None, **kwargs: Any) -> None:
    """Show what a patch changes, for which models, made how.

    Every string taken from the patch is printed without control characters or escape sequences
    (a patch from a stranger cannot move the cursor, clear the screen or set the terminal's title).
    """
    from ..errors import OptionError
    from ..outputs import check_outputs
    from ..patchfile import read_manifest
    from ..safetext import printable

    o = options_from(InspectOptions, kwargs)
    if patch_file is None and o.as_json and o.as_json != "-":  # the old flag form: inspect --json PATCH
        patch_file, o = o.as_json, InspectOptions(as_json="-")
    if patch_file is None:
        raise OptionError("Give the patch file to inspect: surgery inspect PATCH [--json PATH].")
    check_outputs((patch_file,), files=(("--json", o.as_json),))
    m = read_manifest(patch_file)
    if o.as_json:  # ensure_ascii: every control character is written as a \u escape
        emit_json(o.as_json, m.to_dict(), sort_keys=True, ensure_ascii=True)
        if o.as_json == "-":
            return
    for line in manifest_lines(m):
        click.echo(printable(line))


@click.command(short_help="Apply a patch to the SFT model, bit-exact, fingerprints checked.")
@click.argument("sft")
@click.argument("patch_file", type=click.Path(dir_okay=False))
@add_options(ApplyOptions)
@add_options(ModelAccess)
@add_options(CardOptions)
@add_options(PushOptions)
@threads_option
@json_stdout()
def apply(sft: str, patch_file: str, **kwargs: Any) -> None:
    """Apply a patch to SFT and write the repaired model (bit-exact, fingerprints checked first).

    The folder also gets a model card, README.md: hub metadata, models and revisions, the patch, the numbers
    of --eval-results, and this command.
    """
    from ..apply import apply_patch
    from ..hub import push as push_folder
    from ..modelcard import card_name, load_eval_results
    from ..modelio import locate
    from ..outputs import check_outputs, refuse_input_overlap, refuse_unwritable

    o = options_from(ApplyOptions, kwargs)
    access = options_from(ModelAccess, kwargs)
    card = options_from(CardOptions, kwargs)
    push = options_from(PushOptions, kwargs)
    check_can_push(push.push_to_hub)
    evaluation = load_eval_results(card.eval_results) if card.eval_results else None
    source = locate(sft, o.base)  # an adapter's base is an input too
    inputs = (sft, o.base, patch_file, source.path, source.adapter_base)
    refuse_unwritable(o.output, flag="-o", folder=True)
    refuse_input_overlap(o.output, inputs, flag="-o", folder=True)
    check_outputs((*inputs, o.output), files=(("--json", o.json_out),))
    info = apply_patch(
        sft,
        Path(patch_file),
        Path(o.output),
        base=o.base,
        trust_remote_code=access.trust_remote_code,
        allow_pickle=access.allow_pickle,
        max_shard_bytes=o.shard_bytes(),
        command=shlex.join(reproducible_command(["surgery", "apply", sft, patch_file], o) + _switches(access)),
        evaluation=evaluation,
        name=card_name(o.output, push.push_to_hub),
    )
    click.echo(f"wrote {o.output}: {info['tensors_patched']} tensors patched, fingerprints verified")
    if o.json_out:
        emit_json(o.json_out, {"output": o.output, "patch": patch_file, "sft": sft, **info})
    if push.push_to_hub:
        message = f"surgery apply: {Path(patch_file).name}"
        url = push_folder(push.push_to_hub, Path(o.output), commit_message=message, private=push.private)
        click.echo(f"pushed {o.output} to {url}")


def _switches(access: ModelAccess) -> list[str]:
    """The model-access switches that were given, spelled out (a rerun needs them too)."""
    return reproducible_command([], access)
