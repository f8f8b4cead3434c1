"""Export orchestration: a model (or SFT + patch) to a verified ONNX folder a device can run as it is.

:func:`export_model` is the whole pipeline: export into a temporary folder, optionally quantize,
verify against PyTorch, and only then rename the folder into place, so a half-written or unverified
artefact never appears at the requested path. :func:`deploy_patch` applies a patch first;
:func:`verify_export` re-judges an existing export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..apply import apply_patch, repaired_card
from ..atomic import atomic_folder, destination_lock, normal_modes, write_json_atomic, write_text_atomic
from ..errors import SurgeryError
from ..modelcard import CARD_NAME, Evaluation
from ..modelio import ModelSource, copy_side_files, load_model, load_tokenizer, locate, safetensors_files
from ..patchfile import read_manifest
from ..progress import StageTimer
from ..provenance import command_line, versions
from .honesty import honesty_check, honesty_items
from .onnx import EXPORT_RECORD, ONNX_NAME, TASK, export_onnx, export_precision, require_onnx, weights_size_bytes
from .options import ExportOptions
from .protect import protect_folder, restored_columns
from .quantize import quantize_int8, quantize_weight_only
from .verify import (
    VerificationError,
    VerifyThresholds,
    combine,
    load_prompts,
    thresholds_for,
    verify_folder,
    write_report,
)

log = logging.getLogger(__name__)

#: distributions whose versions an export records beside torch and transformers
ONNX_DISTRIBUTIONS = ("optimum-onnx", "onnx", "onnxruntime")
#: a verification: (PyTorch model folder, ONNX folder, thresholds) -> comparison
Check = Callable[[Path, Path, VerifyThresholds], dict]
#: the honesty check: (PyTorch model folder, ONNX folder) -> judgement
HonestyCheck = Callable[[Path, Path], dict]


def verify_thresholds(options: ExportOptions, precision: str | None) -> VerifyThresholds:
    """The precision's defaults with the user's explicit thresholds on top."""
    return thresholds_for(
        precision,
        max_abs_diff=options.max_abs_diff,
        mean_abs_diff=options.mean_abs_diff,
        min_top1_agreement=options.min_top1,
        greedy_tokens=options.greedy_tokens,
        require_same_greedy=options.same_greedy,
    )


def require_empty_output(out: Path) -> None:
    """Refuse to write over anything: an export replaces nothing the user had."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SurgeryError(f"Output folder {out} exists and is not empty; choose another or remove it.")


@contextlib.contextmanager
def _scratch(out: Path, tag: str) -> Iterator[Path]:
    """A temporary folder beside ``out`` (same file system, so large files never cross devices).

    Its name matches :data:`surgery.atomic.TEMP_FOLDER_TAGS`, so one left by a killed run is removed by the next
    run that locks ``out``; take :func:`~surgery.atomic.destination_lock` before making it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.{tag}-", dir=out.parent, ignore_cleanup_errors=True) as d:
        yield Path(d)


def _materialize(source: ModelSource, scratch: Path, *, trust_remote_code: bool, allow_pickle: bool) -> Path:
    """A full model folder the exporter can read: the source itself, or a PEFT adapter merged into scratch."""
    if source.adapter_base is None:
        safetensors_files(source.path, allow_pickle)  # refuses pickle-only folders up front
        return source.path
    log.info("merging adapter %s into %s before export", source.path, source.adapter_base)
    model = load_model(source, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    merged = scratch / "merged"
    model.save_pretrained(str(merged), safe_serialization=True)
    load_tokenizer(source, trust_remote_code=trust_remote_code).save_pretrained(str(merged))
    copy_side_files([source.path, source.adapter_base], merged)
    del model
    return merged


def quantize_folder(folder: Path, options: ExportOptions) -> dict:
    """Quantize the exported graph in place as ``options`` ask; returns the record for export.json."""
    if options.quantize == "int4" or options.int8_method == "weight-only":
        int4 = options.quantize == "int4"
        return quantize_weight_only(
            folder,
            bits=4 if int4 else 8,
            block_size=options.block_size,
            accuracy_level=options.accuracy_level,
            exclude=options.int8_keep,
            method=options.int4_method if int4 else "rtn",
            keep_8bit=options.keep_8bit if int4 else (),
        )
    return quantize_int8(folder, exclude=options.int8_keep or None, per_channel=options.int8_per_channel)


def _quantize_and_verify(
    src_dir: Path,
    folder: Path,
    options: ExportOptions,
    record: dict,
    timer: StageTimer,
    check: Check,
    honesty: HonestyCheck | None,
) -> dict[str, dict]:
    """Quantize if asked and run the checks; fills the sizes into ``record``, returns the checks."""
    quantize = options.quantize
    checks: dict[str, dict] = {}
    if options.verify and quantize:
        # judge the exporter and the quantizer separately: fp32 must match tightly before int8 is judged loosely
        with timer.stage("verify fp32"):
            checks["onnx-fp32"] = check(src_dir, folder, thresholds_for(None))
    if quantize:
        with timer.stage("quantize"):
            record[quantize] = quantize_folder(folder, options)
    record["bytes"] = weights_size_bytes(folder)
    if options.verify and not (checks and not checks["onnx-fp32"]["passed"]):
        with timer.stage(f"verify {quantize or 'fp32'}"):
            checks[f"onnx-{quantize or 'fp32'}"] = check(src_dir, folder, verify_thresholds(options, quantize))
        if quantize and honesty is not None:
            with timer.stage("verify honesty"):
                checks["honesty"] = honesty(src_dir, folder)
    return checks


def _honesty_items(options: ExportOptions) -> list:
    """The honesty check's items, loaded before any work (a missing benchmark costs nothing); none for fp32."""
    if not (options.verify and options.quantize and options.honesty_prompts):
        return []
    try:
        return honesty_items(options.honesty_prompts, options.honesty_benchmark)
    except SurgeryError as exc:
        raise SurgeryError(
            f"The honesty check cannot load its items ({exc}); pass --honesty-prompts 0 to skip it."
        ) from None


def rejected_path(out: Path) -> Path:
    """Where a failing export goes: ``<out>.rejected``, or ``<out>.rejected-2``, ``-3``, ... when that exists.

    Whatever already has that name (a user's folder, an earlier rejected export) is never replaced.
    """
    candidate, n = out.with_name(out.name + ".rejected"), 2
    while os.path.lexists(candidate):
        candidate, n = out.with_name(f"{out.name}.rejected-{n}"), n + 1
    return candidate


def _judge(folder: Path, out: Path, checks: dict[str, dict], *, artefact: str, source: str) -> dict:
    """Write verify.json; a failing folder is moved to a fresh ``<out>.rejected`` name (:func:`rejected_path`)
    and :class:`VerificationError` raised."""
    report = combine(checks, artefact=artefact, source=source)
    write_report(folder, report)
    if not report["passed"]:
        rejected = rejected_path(out)
        normal_modes(folder)  # the user inspects it: readable like any output, not the temp folder's 0700
        os.rename(folder, rejected)
        raise VerificationError(report, where=rejected)
    return report


def export_model(
    model: str,
    out: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    base: str | None = None,
    threads: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    source_label: str | None = None,
    model_card: str | None = None,
) -> dict[str, Any]:
    """Export (and quantize, and verify) ``model`` into ``out`` atomically; returns the export record.

    ``model_card``: the text of a ``README.md`` written into the folder (``deploy`` gives one).

    With verification on and failing, nothing appears at ``out``: the rejected folder is moved to
    ``<out>.rejected`` (with its verify.json) and :class:`~surgery.export.verify.VerificationError` is raised.
    ``source_label`` names the source in export.json/verify.json when ``model`` is a temporary folder.
    """
    require_onnx("surgery export")
    options = options or ExportOptions()
    prompts = load_prompts(options.prompts_file)
    items = _honesty_items(options)
    protected = restored_columns(options.protect_honesty) if options.protect_honesty else None
    out = Path(out)
    require_empty_output(out)
    source = locate(model, base)
    timer = StageTimer()
    record: dict[str, Any] = {
        "source": source_label or source.identifier,
        "task": TASK,
        "quantize": options.quantize,
        "opset": options.opset,
        "command": command_line(),
        "versions": versions(*ONNX_DISTRIBUTIONS),
    }
    check = functools.partial(
        verify_folder, prompts=prompts, threads=threads, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    honesty: HonestyCheck | None = None
    if items:
        honesty = functools.partial(
            honesty_check,
            items=items,
            max_drop=options.max_honesty_drop,
            threads=threads,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
    # the lock first: taking it removes stale temps of `out`, which the scratch folder's name also matches
    with destination_lock(out), _scratch(out, "tmp") as scratch, atomic_folder(out) as folder:
        with timer.stage("materialize"):
            src_dir = _materialize(source, scratch, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        export_dir = src_dir
        if protected is not None:
            with timer.stage("protect"):
                export_dir = scratch / "protected"
                record["protect_honesty"] = protect_folder(
                    src_dir,
                    export_dir,
                    protected,
                    options.scale,
                    str(options.protect_honesty),
                    trust_remote_code=trust_remote_code,
                ).as_dict()
        with timer.stage("export"):
            export_onnx(export_dir, folder, opset=options.opset, trust_remote_code=trust_remote_code)
        record["fp32_bytes"] = weights_size_bytes(folder)
        # every check compares with the unscaled source: the folded scaling must not change the float model
        checks = _quantize_and_verify(src_dir, folder, options, record, timer, check, honesty)
        record["seconds"] = {k: round(v, 2) for k, v in timer.seconds.items()}
        write_json_atomic(folder / EXPORT_RECORD, record, default=str)
        if model_card is not None:
            write_text_atomic(folder / CARD_NAME, model_card)
        report = None
        if options.verify:
            report = _judge(folder, out, checks, artefact=options.quantize or "fp32", source=record["source"])
    record["verify"] = report
    return record


def deploy_patch(
    sft: str,
    patch: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    base: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    command: str | None = None,
    evaluation: Evaluation | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Apply ``patch`` to ``sft`` in a scratch folder and export the repaired model: one step to a device artefact.

    Everything is checked before the patch is applied (extra, prompts, output folder), so a mistake costs
    nothing; the patched model never leaves the scratch folder. Returns the export record. The folder gets a
    model card (``README.md``) naming the model ``name`` (default: the folder's name), with ``evaluation``
    and ``command`` (default: this process's command line).
    """
    require_onnx("surgery deploy")
    options = options or ExportOptions()
    load_prompts(options.prompts_file)
    _honesty_items(options)
    if options.protect_honesty:
        restored_columns(options.protect_honesty)
    out = Path(out)
    require_empty_output(out)
    card = repaired_card(
        read_manifest(Path(patch)),
        locate(sft, base),
        Path(patch),
        name=name or out.name,
        command=command if command is not None else command_line(),
        evaluation=evaluation,
        artefact="onnx",
        quantize=options.quantize,
    )
    with destination_lock(out), _scratch(out, "patched") as scratch:
        patched = scratch / "model"
        apply_patch(
            sft, Path(patch), patched, base=base, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
        )
        log.info("applied %s to %s", patch, sft)
        return export_model(
            str(patched),
            out,
            options,
            trust_remote_code=trust_remote_code,
            source_label=f"{sft} + {patch}",
            model_card=card,
        )


def verify_export(
    model: str,
    out: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Re-verify the existing export ``out`` against ``model`` and rewrite its verify.json; returns the report.

    The precision is ``options.quantize`` or the export's own; a failing report is written and then
    raised as :class:`~surgery.export.verify.VerificationError` (which carries it).
    """
    require_onnx("surgery export")
    options = options or ExportOptions()
    prompts = load_prompts(options.prompts_file)
    out = Path(out)
    if not (out / ONNX_NAME).is_file():
        raise SurgeryError(f"--verify-only needs an existing export in {out} (no model.onnx there).")
    precision = options.quantize or export_precision(out)
    check = verify_folder(
        model,
        out,
        verify_thresholds(options, precision),
        prompts=prompts,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    checks = {f"onnx-{precision or 'fp32'}": check}
    items = _honesty_items(dataclasses.replace(options, quantize=precision))
    if items:
        checks["honesty"] = honesty_check(
            model,
            out,
            items,
            max_drop=options.max_honesty_drop,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
    report = combine(checks, artefact=precision or "fp32", source=str(model))
    write_report(out, report)
    if not report["passed"]:
        raise VerificationError(report)
    return report
