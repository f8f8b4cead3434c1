"""``surgery export`` and ``surgery deploy``: ONNX artefacts a device can run, verified against PyTorch.

Only option parsing and printing live here; the work is :mod:`surgery.export.pipeline`. Nothing from
the ``[onnx]`` extra is imported when this module loads, so ``surgery --help`` works without it and the
commands themselves report a missing extra as one sentence.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..export.options import ExportOptions
from ..hub import CardOptions, PushOptions, check_can_push
from .options import (
    AliasedOption,
    ModelAccess,
    add_options,
    emit_json,
    json_stdout,
    options_from,
    reproducible_command,
    threads_option,
)


def _help(name: str) -> str:
    """A field's help text, for the options the command declares itself."""
    return next(f.metadata["help"] for f in dataclasses.fields(ExportOptions) if f.name == name)


def _export_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ExportOptions knobs, the tri-state greedy flag pair, and the shared model-access switches."""
    for option in reversed(
        [
            click.option("--same-greedy/--any-greedy", "same_greedy", default=None, help=_help("same_greedy")),
            click.option(
                "--json",
                "json_out",
                default=None,
                metavar="PATH",
                help="Write the export record (sizes, verification) as JSON to PATH ('-' for stdout).",
            ),
            threads_option,
        ]
    ):
        fn = option(fn)
    return add_options(ExportOptions)(add_options(ModelAccess)(json_stdout()(fn)))


def _print_record(out: Path, record: dict) -> None:
    size = record["bytes"] / 1e6
    click.echo(f"wrote {out} ({size:.1f} MB of ONNX weights, {record.get('quantize') or 'fp32'})")
    report = record.get("verify")
    if report:
        _print_verify(report, out)


def _points(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _print_verify(report: dict, folder: Path) -> None:
    for name, c in report["checks"].items():
        if name == "honesty":
            click.echo(
                f"honesty: F1 {_points(c['quantized']['honesty_f1'])} vs fp32 {_points(c['fp32']['honesty_f1'])} "
                f"(drop {c['honesty_drop']:.1f}, allowed {c['max_honesty_drop']:g}), refusal on unanswerable "
                f"{_points(c['quantized']['refusal_unanswerable'])}% vs {_points(c['fp32']['refusal_unanswerable'])}%, "
                f"on answerable {_points(c['quantized']['refusal_answerable'])}% vs "
                f"{_points(c['fp32']['refusal_answerable'])}%, "
                f"{c['identical_answers']}/{c['items']} answers identical -> {'pass' if c['passed'] else 'FAIL'}"
            )
            continue
        click.echo(
            f"{name}: max |Δlogit| {c['max_abs_diff']:.3g}, mean {c['mean_abs_diff']:.3g}, "
            f"top-1 {c['top1_agreement']:.1%}, greedy equal {c['greedy_equal_prompts']}/{c['prompts']} "
            f"({c['greedy_tokens']} tokens) -> {'pass' if c['passed'] else 'FAIL'}"
        )
    click.echo(f"verification {'passed' if report['passed'] else 'FAILED'}: {folder / 'verify.json'}")


@click.command("export", short_help="Export a model to ONNX through Optimum (optionally int8/int4), verified.")
@click.argument("model")
@click.option(
    "-o",
    "--out",  # the old spelling, hidden
    "--output",
    "out",
    cls=AliasedOption,
    hidden_names=("--out",),
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (must not exist or be empty; written atomically).",
)
@click.option("--base", default=None, help="Base model when MODEL is a PEFT adapter (default: the adapter's own).")
@click.option(
    "--verify-only",
    is_flag=True,
    help="Do not export: re-verify the existing --output folder against MODEL and rewrite its verify.json.",
)
@_export_options
def export(
    model: str,
    out: Path,
    base: str | None,
    verify_only: bool,
    trust_remote_code: bool,
    allow_pickle: bool,
    json_out: str | None,
    **kwargs: Any,
) -> None:
    """Export MODEL (a Hugging Face folder) to an ONNX folder for onnxruntime, verified against PyTorch.

    \b
    surgery export repaired/ -o repaired-onnx/ [--quantize int8|int4 [--protect-honesty PATCH]]
    surgery eval repaired-onnx/ --backend onnx --benchmark selfaware
    """
    from ..export.pipeline import export_model, verify_export
    from ..export.verify import VerificationError
    from ..outputs import check_outputs

    options = options_from(ExportOptions, kwargs)
    check_outputs((model, base, options.prompts_file, out), files=(("--json", json_out),))
    if not verify_only:
        check_outputs((model, base, options.prompts_file), folders=(("-o", out),))
    if verify_only:
        try:
            report = verify_export(model, out, options, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        except VerificationError as exc:
            _print_verify(exc.report, out)
            raise
        _print_verify(report, out)
        if json_out:
            emit_json(json_out, report)
        return
    record = export_model(
        model, out, options, base=base, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    _print_record(out, record)
    if json_out:
        emit_json(json_out, record)


@click.command("deploy", short_help="Apply a patch, export to ONNX and verify, in one step.")
@click.argument("sft")
@click.argument("patch", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",  # the old spelling, hidden
    "--output",
    "out",
    cls=AliasedOption,
    hidden_names=("--out",),
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output ONNX folder (must not exist or be empty; written atomically).",
)
@click.option("--base", default=None, help="Base model when SFT is a PEFT adapter (default: the adapter's own).")
@_export_options
@add_options(CardOptions)
@add_options(PushOptions)
def deploy(
    sft: str,
    patch: Path,
    out: Path,
    base: str | None,
    trust_remote_code: bool,
    allow_pickle: bool,
    json_out: str | None,
    **kwargs: Any,
) -> None:
    """Apply PATCH to SFT, export the repaired model to ONNX and verify it: one step to a device artefact.

    The folder also gets a model card, README.md (hub metadata, models, the patch, --eval-results, this command).

    \b
    surgery deploy sft-model/ honesty.patch.safetensors -o repaired-onnx/ [--quantize int8]
    """
    from ..export.pipeline import deploy_patch
    from ..hub import push as push_folder
    from ..modelcard import card_name, load_eval_results
    from ..outputs import check_outputs

    options = options_from(ExportOptions, kwargs)
    card = options_from(CardOptions, kwargs)
    push = options_from(PushOptions, kwargs)
    check_can_push(push.push_to_hub)
    check_outputs((sft, patch, base, options.prompts_file), files=(("--json", json_out),), folders=(("-o", out),))
    evaluation = load_eval_results(card.eval_results) if card.eval_results else None
    record = deploy_patch(
        sft,
        patch,
        out,
        options,
        base=base,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        command=_deploy_command(sft, patch, out, base, options, trust_remote_code, allow_pickle),
        evaluation=evaluation,
        name=card_name(out, push.push_to_hub),
    )
    click.echo(f"applied {patch} to {sft}")
    _print_record(out, record)
    if json_out:
        emit_json(json_out, record)
    if push.push_to_hub:
        url = push_folder(push.push_to_hub, out, commit_message=f"surgery deploy: {patch.name}", private=push.private)
        click.echo(f"pushed {out} to {url}")


def _deploy_command(
    sft: str, patch: Path, out: Path, base: str | None, options: ExportOptions, trust_code: bool, pickle: bool
) -> str:
    """The ``surgery deploy`` command that reproduces this artefact, every export option spelled out."""
    words = ["surgery", "deploy", sft, str(patch), "-o", str(out)] + (["--base", base] if base else [])
    words += ["--trust-remote-code"] * trust_code + ["--allow-pickle"] * pickle
    if options.same_greedy is not None:
        words.append("--same-greedy" if options.same_greedy else "--any-greedy")
    return shlex.join(reproducible_command(words, options))
