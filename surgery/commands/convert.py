"""``surgery convert``: re-encode a patch or export it as a PEFT LoRA adapter (thin wrapper over
:mod:`surgery.convert`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from .options import ModelAccess, add_options, emit_json, json_output, json_stdout, opt, options_from, output, required

#: the same list as surgery.convert.TARGETS (kept here so that ``--help`` imports no library)
TARGETS = ("full", "bf16", "int8", "peft")


@dataclass(frozen=True)
class ConvertOptions:
    to: str = required("Target encoding, or a PEFT LoRA adapter folder.", choices=TARGETS)
    output: str = output("Patch file (or, for peft, adapter folder) to write.", metavar="PATH")
    sft: str | None = opt(
        None,
        "The SFT model the patch was made for: needed to form the change against it (full -> bf16/int8, "
        "any -> full, a full patch -> peft); its fingerprints are checked.",
        metavar="MODEL",
    )
    base: str | None = opt(None, "Base of --sft when it is a PEFT adapter without a usable base path.")
    json_out: str | None = json_output("Write the conversion report as JSON to PATH ('-' for stdout).")


@click.command(short_help="Re-encode a patch (full, bf16, int8) or export it as a PEFT LoRA adapter.")
@click.argument("patch_file", type=click.Path(dir_okay=False))
@add_options(ConvertOptions)
@add_options(ModelAccess)
@json_stdout()
def convert(patch_file: str, **kwargs: Any) -> None:
    """Re-encode PATCH_FILE as --to (full, bf16, int8) or export it as a PEFT LoRA adapter (--to peft).

    bf16 and int8 store the change against the SFT weights; the patched result's fingerprint is still
    checked on apply. See docs/encodings.md."""
    from ..convert import convert_patch
    from ..modelio import locate, open_checkpoint
    from ..outputs import refuse_input_overlap, refuse_unwritable

    o = options_from(ConvertOptions, kwargs)
    access = options_from(ModelAccess, kwargs)
    folder = o.to == "peft"
    source = locate(o.sft, o.base) if o.sft else None
    inputs = (patch_file, o.sft, o.base, *((source.path, source.adapter_base) if source else ()))
    for path, flag in ((o.output, "-o"), (o.json_out, "--json")):
        if path and path != "-":
            refuse_unwritable(path, flag=flag, folder=folder and flag == "-o")
            refuse_input_overlap(path, inputs, flag=flag, folder=folder and flag == "-o")
    sft = open_checkpoint(source, allow_pickle=access.allow_pickle) if source else None
    report = convert_patch(patch_file, o.output, o.to, sft=sft)
    share = f" ({100 * report.bytes_out / report.bytes_in:.0f}% of the source)" if report.bytes_in else ""
    click.echo(f"wrote {o.output}: {o.to}, {report.bytes_out / 1e6:.2f} MB{share}")
    if report.max_abs_error is not None:
        click.echo(
            f"  weight error vs source  max {report.max_abs_error:.3g}  mean {report.mean_abs_error:.3g}  "
            f"(mean change {report.mean_abs_change:.3g})"
        )
    if report.ranks:
        ranks = sorted(report.ranks.values())
        click.echo(
            f"  LoRA ranks  {len(ranks)} modules, rank {ranks[0]}..{ranks[-1]} (sum {sum(ranks)}); "
            "per module in adapter_config.json rank_pattern"
        )
    if o.json_out:
        emit_json(o.json_out, report.to_dict(), sort_keys=True)
