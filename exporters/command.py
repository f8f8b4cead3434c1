"""``surgery export`` and ``surgery deploy``: ONNX artefacts a device can run, verified against PyTorch.

This module imports nothing from the ``[onnx]`` extra at import time, so ``surgery --help`` works
without it and the commands themselves report a missing extra as one sentence.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import click

from surgery.errors import SurgeryError

from . import require_onnx


def _verify_options(f):
    """Options shared by export and deploy; unset thresholds take the precision's defaults (verify.py)."""
    options = [
        click.option("--verify/--no-verify", default=True, show_default=True,
                     help="Compare the artefact with PyTorch on real prompts and write verify.json."),
        click.option("--max-abs-diff", type=float, default=None,
                     help="Largest allowed |logit difference| (default 1e-3 for fp32, off for int8)."),
        click.option("--mean-abs-diff", type=float, default=None,
                     help="Largest allowed mean |logit difference| (default 1e-4 for fp32, off for int8)."),
        click.option("--min-top1", type=click.FloatRange(0, 1), default=None,
                     help="Smallest allowed top-1 agreement over compared positions (default 1.0 fp32, 0.6 int8)."),
        click.option("--greedy-tokens", type=click.IntRange(1), default=None,
                     help="Greedy tokens generated per prompt and compared (default 16)."),
        click.option("--same-greedy/--any-greedy", default=None,
                     help="Require identical greedy generations (default: yes for fp32, no for int8)."),
        click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="JSONL of verification prompts ('prompt', 'question' or 'messages'); default: built-in."),
        click.option("--quantize", type=click.Choice(["int8"]), default=None,
                     help="onnxruntime dynamic int8 quantization of the exported graph."),
        click.option("--int8-keep-fp32", "int8_keep", multiple=True, metavar="PATTERN",
                     help="Node-name substring kept in fp32 when quantizing (repeatable; default: down_proj)."),
        click.option("--opset", type=int, default=None, help="ONNX opset (default: Optimum's for the family)."),
        click.option("--trust-remote-code", is_flag=True, help="Allow custom modelling code from the model folder."),
        click.option("--allow-pickle", is_flag=True, help="Accept pickle weight files (can run arbitrary code)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _thresholds(quantize, max_abs_diff, mean_abs_diff, min_top1, greedy_tokens, same_greedy):
    from .verify import thresholds_for

    return thresholds_for(quantize, max_abs_diff=max_abs_diff, mean_abs_diff=mean_abs_diff,
                          min_top1_agreement=min_top1, greedy_tokens=greedy_tokens, require_same_greedy=same_greedy)


def _print_record(out: Path, record: dict) -> None:
    size = record["bytes"] / 1e6
    click.echo(f"wrote {out} ({size:.1f} MB of ONNX weights{', int8' if record.get('quantize') else ', fp32'})")
    report = record.get("verify")
    if report:
        _print_verify(report, out)


def _print_verify(report: dict, folder: Path) -> None:
    for name, c in report["checks"].items():
        click.echo(f"{name}: max |Δlogit| {c['max_abs_diff']:.3g}, mean {c['mean_abs_diff']:.3g}, "
                   f"top-1 {c['top1_agreement']:.1%}, greedy equal {c['greedy_equal_prompts']}/{c['prompts']} "
                   f"({c['greedy_tokens']} tokens) -> {'pass' if c['passed'] else 'FAIL'}")
    click.echo(f"verification {'passed' if report['passed'] else 'FAILED'}: {folder / 'verify.json'}")


def _precision_of(folder: Path) -> str | None:
    """int8 or fp32 (None) for an existing export: from its export.json, else from the graph's ops."""
    record = folder / "export.json"
    if record.is_file():
        return json.loads(record.read_text()).get("quantize")
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return "int8" if any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in graph.node) else None


@click.command("export")
@click.argument("model")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (must not exist or be empty; written atomically).")
@click.option("--base", default=None, help="Base model when MODEL is a PEFT adapter (default: the adapter's own).")
@click.option("--verify-only", is_flag=True,
              help="Do not export: re-verify the existing folder OUT against MODEL and rewrite its verify.json.")
@_verify_options
def export(model, out, base, verify_only, verify, max_abs_diff, mean_abs_diff, min_top1, greedy_tokens,
           same_greedy, prompts_file, quantize, int8_keep, opset, trust_remote_code, allow_pickle):
    """Export MODEL (a Hugging Face folder) to an ONNX folder for onnxruntime, verified against PyTorch.

    \b
    surgery export repaired/ -o repaired-onnx/ [--quantize int8]
    surgery eval repaired-onnx/ --backend onnx --benchmark selfaware
    """
    require_onnx("surgery export")
    from .verify import combine, load_prompts, verify_folder, write_report

    prompts = load_prompts(prompts_file)
    if verify_only:
        if not (out / "model.onnx").is_file():
            raise SurgeryError(f"--verify-only needs an existing export in {out} (no model.onnx there).")
        precision = quantize or _precision_of(out)
        thresholds = _thresholds(precision, max_abs_diff, mean_abs_diff, min_top1, greedy_tokens, same_greedy)
        check = verify_folder(model, out, thresholds, prompts=prompts, threads=_threads(),
                              trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        report = combine({f"onnx-{precision or 'fp32'}": check}, artefact=precision or "fp32", source=str(model))
        write_report(out, report)
        _print_verify(report, out)
        if not report["passed"]:
            from .verify import VerificationError

            raise VerificationError(report)
        return
    record = _run_export(model, out, base=base, verify=verify, quantize=quantize, opset=opset, prompts=prompts,
                         int8_keep=int8_keep, thresholds=(max_abs_diff, mean_abs_diff, min_top1, greedy_tokens,
                                                          same_greedy),
                         trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    _print_record(out, record)


@click.command("deploy")
@click.argument("sft")
@click.argument("patch", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output ONNX folder (must not exist or be empty; written atomically).")
@click.option("--base", default=None, help="Base model when SFT is a PEFT adapter (default: the adapter's own).")
@_verify_options
def deploy(sft, patch, out, base, verify, max_abs_diff, mean_abs_diff, min_top1, greedy_tokens, same_greedy,
           prompts_file, quantize, int8_keep, opset, trust_remote_code, allow_pickle):
    """Apply PATCH to SFT, export the repaired model to ONNX and verify it: one step to a device artefact.

    \b
    surgery deploy sft-model/ honesty.patch.safetensors -o repaired-onnx/ [--quantize int8]
    """
    require_onnx("surgery deploy")
    from surgery.apply import apply_patch

    from .verify import load_prompts

    prompts = load_prompts(prompts_file)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SurgeryError(f"Output folder {out} exists and is not empty; choose another or remove it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.patched-", dir=out.parent))
    try:
        patched = scratch / "model"
        apply_patch(sft, patch, patched, base=base, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        click.echo(f"applied {patch} to {sft}")
        record = _run_export(str(patched), out, base=None, verify=verify, quantize=quantize, opset=opset,
                             prompts=prompts, int8_keep=int8_keep,
                             thresholds=(max_abs_diff, mean_abs_diff, min_top1, greedy_tokens, same_greedy),
                             trust_remote_code=trust_remote_code, allow_pickle=False,
                             source_label=f"{sft} + {patch}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _print_record(out, record)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _run_export(model, out, *, base, verify, quantize, opset, prompts, int8_keep, thresholds, trust_remote_code,
                allow_pickle, source_label=None) -> dict:
    from .onnx_export import export_model

    return export_model(
        model, out, quantize=quantize, opset=opset, verify=verify, thresholds=_thresholds(quantize, *thresholds),
        prompts=prompts, int8_exclude=tuple(int8_keep) or None, base=base, threads=_threads(),
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, source_label=source_label,
    )
