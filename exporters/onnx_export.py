"""Export a Hugging Face causal LM folder to an ONNX folder that a device can run as it is.

The folder is produced by Optimum's exporter (task ``text-generation-with-past``: one ``model.onnx``
with a KV cache), carries the tokenizer, chat template and generation config, and loads with
``optimum.onnxruntime.ORTModelForCausalLM.from_pretrained(folder)``. :func:`export_model` is the whole
user-facing pipeline: export into a temporary folder, optionally quantize, verify against PyTorch,
and only then rename the folder into place, so a half-written or unverified artefact never appears
at the requested path.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.modelio import ModelSource, copy_side_files, load_model, load_tokenizer, locate, safetensors_files
from surgery.progress import StageTimer

from . import require_onnx

log = logging.getLogger(__name__)

TASK = "text-generation-with-past"
ONNX_NAME = "model.onnx"
EXPORT_RECORD = "export.json"
#: files a device needs beside the graph; the exporter normally writes them, we make sure it did
REQUIRED_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer_config.json")


def onnx_files(folder: Path) -> list[Path]:
    """The graph and its external-data files (everything that holds weights)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.name.startswith(ONNX_NAME) or p.suffix == ".onnx_data")


def weights_size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in onnx_files(folder))


def export_onnx(model_dir: Path, out_dir: Path, *, opset: int | None = None, trust_remote_code: bool = False) -> None:
    """Run Optimum's exporter on a full (non-adapter) model folder; ``out_dir`` is created by the exporter."""
    require_onnx("surgery export")
    from optimum.exporters.onnx import main_export

    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "?")
    try:
        main_export(
            str(model_dir),
            output=str(out_dir),
            task=TASK,
            opset=opset,
            dtype="fp32",  # onnxruntime's CPU kernels are fp32/int8; half-precision sources are upcast
            do_validation=False,  # our own verification (verify.py) runs on real prompts instead
            trust_remote_code=trust_remote_code,
            local_files_only=True,
            library_name="transformers",
        )
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SurgeryError(f"Optimum could not export this '{model_type}' model to ONNX: {first}") from None
    if not (Path(out_dir) / ONNX_NAME).is_file():
        raise SurgeryError(f"Optimum wrote no {ONNX_NAME} for this '{model_type}' model (task {TASK}).")
    # a device must need nothing else: make sure tokenizer and generation config came along
    missing = [n for n in REQUIRED_SIDE_FILES if not (Path(out_dir) / n).is_file()]
    if missing:
        copy_side_files([Path(model_dir)], Path(out_dir))
        if not (Path(out_dir) / "generation_config.json").is_file():
            from transformers import GenerationConfig

            GenerationConfig.from_model_config(_config(model_dir)).save_pretrained(str(out_dir))


def _config(model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir))


def ort_session_options(threads: int | None = None):
    """Session options with an explicit thread count (default: torch's), so comparisons are fair."""
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    return so


def load_ort_model(folder: str | Path, *, threads: int | None = None):
    """An exported folder as an HF-style generator (``.generate``/``.__call__``) on onnxruntime's CPU."""
    require_onnx("Running an ONNX model")
    from optimum.onnxruntime import ORTModelForCausalLM

    folder = Path(folder)
    if not (folder / ONNX_NAME).is_file():
        raise SurgeryError(f"{folder} has no {ONNX_NAME}: it is not a folder written by 'surgery export'.")
    try:
        return ORTModelForCausalLM.from_pretrained(
            str(folder), session_options=ort_session_options(threads), use_cache=True, local_files_only=True
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types on corrupt graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SurgeryError(f"onnxruntime could not load {folder / ONNX_NAME}: {first}") from None


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


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()  # only ever reached for an empty folder (checked up front)
    os.replace(tmp, out)


def export_model(
    model: str,
    out: Path,
    *,
    quantize: str | None = None,
    opset: int | None = None,
    verify: bool = True,
    thresholds=None,
    prompts=None,
    int8_exclude: tuple[str, ...] | None = None,
    base: str | None = None,
    threads: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    source_label: str | None = None,
) -> dict:
    """Export (and quantize, and verify) ``model`` into ``out`` atomically; returns the export record.

    With verification on and failing, nothing appears at ``out``: the rejected folder is moved to
    ``<out>.rejected`` (with its verify.json) and :class:`~exporters.verify.VerificationError` is raised.
    ``source_label`` names the source in export.json/verify.json when ``model`` is a temporary folder.
    """
    require_onnx("surgery export")
    from . import quantize as quant
    from . import verify as ver

    if quantize not in (None, "int8"):
        raise SurgeryError(f"Unknown --quantize '{quantize}'; the supported value is int8.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SurgeryError(f"Output folder {out} exists and is not empty; choose another or remove it.")
    source = locate(model, base)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    timer = StageTimer()
    record: dict = {
        "source": source_label or source.identifier,
        "task": TASK,
        "quantize": quantize,
        "opset": opset,
        "command": _command_line(),
        "versions": _versions(),
    }
    try:
        with timer.stage("materialize"):
            src_dir = _materialize(source, scratch, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        folder = scratch / "onnx"
        with timer.stage("export"):
            export_onnx(src_dir, folder, opset=opset, trust_remote_code=trust_remote_code)
        record["fp32_bytes"] = weights_size_bytes(folder)
        checks: dict = {}
        if verify and quantize:
            # judge the exporter and the quantizer separately: fp32 must match tightly before int8 is judged loosely
            with timer.stage("verify fp32"):
                checks["onnx-fp32"] = ver.verify_folder(
                    src_dir, folder, ver.thresholds_for(None), prompts=prompts, threads=threads,
                    trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                )
        if quantize == "int8":
            with timer.stage("quantize"):
                record["int8"] = quant.quantize_int8(folder, exclude=int8_exclude)
        record["bytes"] = weights_size_bytes(folder)
        if verify and not (checks and not checks["onnx-fp32"]["passed"]):
            with timer.stage(f"verify {quantize or 'fp32'}"):
                checks[f"onnx-{quantize or 'fp32'}"] = ver.verify_folder(
                    src_dir, folder, thresholds or ver.thresholds_for(quantize), prompts=prompts, threads=threads,
                    trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                )
        record["seconds"] = {k: round(v, 2) for k, v in timer.seconds.items()}
        _write_json(folder / EXPORT_RECORD, record)
        report = None
        if verify:
            report = ver.combine(checks, artefact=quantize or "fp32", source=record["source"])
            ver.write_report(folder, report)
            if not report["passed"]:
                rejected = out.with_name(out.name + ".rejected")
                shutil.rmtree(rejected, ignore_errors=True)
                os.replace(folder, rejected)
                raise ver.VerificationError(report, where=rejected)
        _publish(folder, out)
        record["verify"] = report
        return record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _command_line() -> str | None:
    """The exact ``surgery ...`` command when run from the CLI (not when called as a library)."""
    if Path(sys.argv[0]).name not in ("surgery", "cli.py", "__main__.py"):
        return None
    return shlex.join(["surgery", *sys.argv[1:]])


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
