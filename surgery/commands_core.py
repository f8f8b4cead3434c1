"""CLI for the core surgery: check, patch, inspect, apply (thin wrappers over the library)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from .hcnr.options import add_patch_options

_model_opts = [
    click.option("--trust-remote-code", is_flag=True, help="Allow model code from the checkpoint (off by default)."),
    click.option("--allow-pickle", is_flag=True, help="Accept pickle (.bin) weights; they can run code."),
]


def model_options(fn):
    for opt in reversed(_model_opts):
        fn = opt(fn)
    return fn


def _patch_command(sft, base, honesty_data, task_data, output, options) -> str:
    """The exact command that reproduces this patch, every option spelled out (written beside it)."""
    args = ["surgery", "patch", sft] + (["--base", base] if base else [])
    args += ["--honesty-data", honesty_data, "--task-data", task_data, "-o", output]
    for key, value in options.to_dict().items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return shlex.join(args) + "\n"


def _fmt_params(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


@click.command()
@click.argument("sft")
@click.option("--base", required=True, help="The model before fine-tuning (folder or cached hub id).")
@click.option("--top", default=10, show_default=True, help="How many of the most-moved matrices to list.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
@model_options
def check(sft: str, base: str, top: int, json_out: str | None, trust_remote_code: bool, allow_pickle: bool) -> None:
    """Pre-flight: same architecture? Where did SFT move the model?"""
    from .check import check_pair
    from .modelio import locate

    report = check_pair(locate(base), locate(sft, base), allow_pickle=allow_pickle)
    click.echo(f"architecture      {report.model_type} (base and SFT agree)")
    click.echo(f"tensors           {report.tensors}, of which {report.linear_matrices} block linear matrices")
    click.echo(f"moved matrices    {report.moved_matrices} / {report.linear_matrices}")
    click.echo(f"params changed    {100 * report.share_params_changed:.1f}% of all entries")
    click.echo("most moved (‖W1−W0‖/‖W0‖):")
    for name, v in sorted(report.matrix_change.items(), key=lambda kv: -kv[1])[:top]:
        click.echo(f"  {v:9.5f}  {name}")
    for w in report.warnings:
        click.echo(f"warning: {w}")
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_dict(), indent=2))
    if report.moved_matrices == 0:
        sys.exit(1)


@click.command()
@click.argument("sft")
@click.option("--base", default=None, help="The model before fine-tuning (default: an adapter's own base).")
@click.option("--honesty-data", required=True, type=click.Path(dir_okay=False),
              help="JSONL of honesty calibration examples (D_hon).")
@click.option("--task-data", required=True, type=click.Path(dir_okay=False),
              help="JSONL of SFT-task calibration examples (D_task).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Patch file to write.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@model_options
@add_patch_options
def patch(sft, base, honesty_data, task_data, output, device, trust_remote_code, allow_pickle, **kwargs):
    """Compute an HCNR honesty patch for SFT (a sparse safetensors file)."""
    from .hcnr.options import options_from_kwargs
    from .hcnr.pipeline import make_patch

    options = options_from_kwargs(kwargs)
    report = make_patch(sft, base, honesty_data, task_data, output, options, trust_remote_code=trust_remote_code,
                        allow_pickle=allow_pickle, device=device)
    Path(output + ".command.txt").write_text(_patch_command(sft, base, honesty_data, task_data, output, options))
    click.echo(f"wrote {output} ({report['patch_bytes'] / 1e6:.2f} MB)")
    click.echo(f"  parameters changed  {_fmt_params(report['parameters_changed'])} "
               f"({100 * report['share_of_linear']:.1f}% of linear, {100 * report['share_of_model']:.1f}% of model)")
    click.echo(f"  matrices touched    {report['matrices_touched']} / {report['matrices_total']}")
    if report.get("residual_ratio") is not None:
        click.echo(f"  output drift left   {100 * report['residual_ratio']:.1f}% of SFT's (calibration inputs)")
    click.echo("  time  " + "  ".join(f"{k} {v:.1f}s" for k, v in report["seconds"].items())
               + f"  | peak RSS {report['peak_rss_mb']:.0f} MB")
    if report["fallbacks"]:
        click.echo(f"  fallback to restore-only: {', '.join(report['fallbacks'])}")


@click.command()
@click.argument("patch_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(patch_file: str, as_json: bool) -> None:
    """Show what a patch changes, for which models, made how."""
    from .patchfile import read_manifest

    m = read_manifest(patch_file)
    if as_json:
        click.echo(json.dumps(m, indent=2, sort_keys=True))
        return
    s = m.get("stats", {})
    click.echo(f"surgery patch v{m.get('tool_version')} ({m.get('method')})")
    click.echo(f"  base   {m.get('base')}")
    click.echo(f"  sft    {m.get('sft')}")
    click.echo(f"  tensors touched     {len(m.get('tensors', {}))}")
    if s:
        click.echo(f"  parameters changed  {_fmt_params(s['parameters_changed'])} "
                   f"({100 * s['share_of_linear']:.1f}% of linear, {100 * s['share_of_model']:.1f}% of model)")
        if s.get("fallbacks"):
            click.echo(f"  fallbacks           {', '.join(s['fallbacks'])}")
    opts = m.get("options", {})
    click.echo("  options  " + " ".join(f"{k}={v}" for k, v in sorted(opts.items())))
    for key, fp in m.get("calibration", {}).items():
        click.echo(f"  {key:6} data {fp['file']}  sha256 {fp['sha256'][:16]}…  {fp['bytes']} bytes")


@click.command()
@click.argument("sft")
@click.argument("patch_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--base", default=None, help="Base of SFT when SFT is a PEFT adapter without a usable base path.")
@click.option("--max-shard-size", default=2.0, show_default=True, help="Shard size in GB.")
@model_options
def apply(sft, patch_file, output, base, max_shard_size, trust_remote_code, allow_pickle) -> None:
    """Apply a patch to SFT and write the repaired model (bit-exact, fingerprints checked first)."""
    from .apply import apply_patch

    info = apply_patch(sft, Path(patch_file), Path(output), base=base, trust_remote_code=trust_remote_code,
                       allow_pickle=allow_pickle, max_shard_bytes=int(max_shard_size * 1024**3))
    click.echo(f"wrote {output}: {info['tensors_patched']} tensors patched, fingerprints verified")
