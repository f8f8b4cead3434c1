"""``surgery check``, ``patch``, ``inspect`` and ``apply``: thin wrappers over the core library."""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..devices import DeviceOptions
from ..hcnr.options import ComputeOptions, PatchOptions
from ..hub import CardOptions, PushOptions, check_can_push
from ..options import parse_size
from .options import ModelAccess, add_options, opt, options_from, reproducible_command, required, switch

if TYPE_CHECKING:  # the library is imported lazily, so that `surgery --help` stays instant
    from ..patchfile import PatchManifest


@dataclass(frozen=True)
class CheckOptions:
    base: str = required("The model before fine-tuning (folder or cached hub id).")
    top: int = opt(10, "How many of the most-moved matrices to list.", low=0)
    json_out: str | None = opt(None, "Write the full report as JSON.", flag="--json", metavar="FILE")


@dataclass(frozen=True)
class PatchIO:
    """What ``surgery patch`` reads and writes; the method's knobs are :class:`PatchOptions`."""

    base: str | None = opt(None, "The model before fine-tuning (default: an adapter's own base).")
    honesty_data: str = required("JSONL of honesty calibration examples (D_hon).", metavar="FILE")
    task_data: str = required("JSONL of SFT-task calibration examples (D_task).", metavar="FILE")
    output: str = required("Patch file to write.", short="-o", metavar="FILE")
    plan: bool = switch("Print the run's estimated peak memory, work-folder disk and arithmetic, and exit.")
    keep_work: bool = switch("Keep <patch>.work/ (cached block inputs and parts) after success.")


@dataclass(frozen=True)
class InspectOptions:
    as_json: bool = switch("Print the manifest as JSON.", flag="--json")


@dataclass(frozen=True)
class ApplyOptions:
    output: str = required("Folder to write.", short="-o", metavar="DIRECTORY")
    base: str | None = opt(None, "Base of SFT when SFT is a PEFT adapter without a usable base path.")
    max_shard_size: str = opt("2", "Shard size: a number of GB, or a size such as 500MB or 5GB.", metavar="SIZE")

    def __post_init__(self) -> None:
        """A bad size is refused while parsing, before any model is read."""
        self.shard_bytes()

    def shard_bytes(self) -> int:
        """``--max-shard-size`` in bytes (a plain number is GB, as before sizes with units were accepted)."""
        return parse_size(self.max_shard_size, "--max-shard-size")


def patch_command(sft: str, io: PatchIO, options: PatchOptions, dtype: str = "float32") -> str:
    """The exact command that reproduces a patch, every option spelled out (written beside the patch).

    The device is the machine's business; the dtype changes the numbers, so it is kept when not float32."""
    words = ["surgery", "patch", sft] + (["--base", io.base] if io.base else [])
    words += ["--honesty-data", io.honesty_data, "--task-data", io.task_data, "-o", io.output]
    words += ["--dtype", dtype] if dtype != "float32" else []
    return shlex.join(reproducible_command(words, options)) + "\n"


def fmt_params(n: int) -> str:
    """A parameter count as people say it (1.23M)."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


@click.command(short_help="Pre-flight: same architecture? where did SFT move the model?")
@click.argument("sft")
@add_options(CheckOptions)
@add_options(ModelAccess)
def check(sft: str, **kwargs: Any) -> None:
    """Pre-flight: same architecture? Where did SFT move the model?"""
    from ..atomic import write_text_atomic
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
        write_text_atomic(o.json_out, json.dumps(report.to_dict(), indent=2))
    if report.moved_matrices == 0:
        sys.exit(1)


@click.command(short_help="Compute an HCNR honesty patch (sparse safetensors).")
@click.argument("sft")
@add_options(PatchIO)
@add_options(ModelAccess)
@add_options(DeviceOptions)
@add_options(PatchOptions)
@add_options(PushOptions)
def patch(sft: str, **kwargs: Any) -> None:
    """Compute an HCNR honesty patch for SFT (a sparse safetensors file)."""
    from ..atomic import write_text_atomic
    from ..hcnr.pipeline import make_patch

    io = options_from(PatchIO, kwargs)
    access = options_from(ModelAccess, kwargs)
    options = options_from(PatchOptions, kwargs)
    placement = options_from(DeviceOptions, kwargs)
    push = options_from(PushOptions, kwargs)
    check_can_push(push.push_to_hub)
    compute = ComputeOptions(placement.device, placement.dtype, io.keep_work)
    if io.plan:
        _print_plan(sft, io, options, compute, access)
        return
    _check_patch_outputs(sft, io)
    report = make_patch(
        sft,
        io.base,
        io.honesty_data,
        io.task_data,
        io.output,
        options,
        trust_remote_code=access.trust_remote_code,
        allow_pickle=access.allow_pickle,
        compute=compute,
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 writes and speaks
        return
    write_text_atomic(io.output + ".command.txt", patch_command(sft, io, options, compute.dtype))
    click.echo(f"wrote {io.output} ({report.patch_bytes / 1e6:.2f} MB)")
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
    if push.push_to_hub:
        _push_patch(io.output, push)


def _push_patch(output: str, push: PushOptions) -> None:
    """The patch with its report and command, in one commit to the repository (names as written here)."""
    from ..hub import push as push_files

    files = [Path(output + suffix) for suffix in ("", ".report.json", ".command.txt")]
    url = push_files(
        str(push.push_to_hub),
        Path(output).parent,
        files=[f for f in files if f.is_file()],
        commit_message=f"surgery patch: {Path(output).name}",
        private=push.private,
    )
    click.echo(f"pushed {output} to {url}")


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
    from ..outputs import refuse_input_overlap, refuse_unwritable

    inputs = (sft, io.base, io.honesty_data, io.task_data)
    for path in (io.output, io.output + ".report.json", io.output + ".command.txt"):
        refuse_unwritable(path, flag="-o")
        refuse_input_overlap(path, inputs, flag="-o")


def manifest_lines(m: PatchManifest) -> list[str]:
    """What ``surgery inspect`` prints about a :class:`~surgery.patchfile.PatchManifest` (not yet sanitised)."""
    from ..revision import describe

    lines = [
        f"surgery patch v{m.tool_version} ({m.method})",
        f"  base   {m.base}",
        f"  sft    {m.sft}",
        *(f"  {role:6} revision {describe(rev)}" for role, rev in sorted((m.revisions or {}).items())),
        f"  tensors touched     {len(m.tensors)}",
    ]
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
@click.argument("patch_file", type=click.Path(dir_okay=False))
@add_options(InspectOptions)
def inspect(patch_file: str, **kwargs: Any) -> None:
    """Show what a patch changes, for which models, made how.

    Every string taken from the patch is printed without control characters or escape sequences
    (a patch from a stranger cannot move the cursor, clear the screen or set the terminal's title).
    """
    from ..patchfile import read_manifest
    from ..safetext import printable

    o = options_from(InspectOptions, kwargs)
    m = read_manifest(patch_file)
    if o.as_json:  # ensure_ascii: every control character is written as a \u escape
        click.echo(json.dumps(m.to_dict(), indent=2, sort_keys=True, ensure_ascii=True))
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
def apply(sft: str, patch_file: str, **kwargs: Any) -> None:
    """Apply a patch to SFT and write the repaired model (bit-exact, fingerprints checked first).

    The folder also gets a model card, README.md: hub metadata, models and revisions, the patch, the numbers
    of --eval-results, and this command.
    """
    from ..apply import apply_patch
    from ..hub import push as push_folder
    from ..modelcard import card_name, load_eval_results
    from ..modelio import locate
    from ..outputs import refuse_input_overlap, refuse_unwritable

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
    if push.push_to_hub:
        message = f"surgery apply: {Path(patch_file).name}"
        url = push_folder(push.push_to_hub, Path(o.output), commit_message=message, private=push.private)
        click.echo(f"pushed {o.output} to {url}")


def _switches(access: ModelAccess) -> list[str]:
    """The model-access switches that were given, spelled out (a rerun needs them too)."""
    return reproducible_command([], access)
