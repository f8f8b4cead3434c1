"""ONNX primitives: the exported folder's layout, Optimum's exporter and onnxruntime sessions.

The folder is produced by Optimum's exporter (task ``text-generation-with-past``: one ``model.onnx``
with a KV cache), carries the tokenizer, chat template and generation config, and loads with
``optimum.onnxruntime.ORTModelForCausalLM.from_pretrained(folder)``. Nothing here imports the
``[onnx]`` extra at module level; :func:`require_onnx` names the extra when it is missing.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from .. import install_hint
from ..errors import MissingExtraError, SurgeryError
from ..modelio import copy_side_files

INSTALL_HINT = install_hint("onnx")
#: the modules the extra provides; each is imported for real, so a broken install is caught too
ONNX_MODULES = ("onnx", "onnxruntime", "onnxruntime.quantization", "optimum.exporters.onnx", "optimum.onnxruntime")

TASK = "text-generation-with-past"
ONNX_NAME = "model.onnx"
EXPORT_RECORD = "export.json"
#: files a device needs beside the graph; the exporter normally writes them, we make sure it did
REQUIRED_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer_config.json")
#: operators only an int8-quantized graph has
INT8_OPS = ("MatMulInteger", "DynamicQuantizeLinear")
#: the operator of onnxruntime's block-wise int4 weights
INT4_OPS = ("MatMulNBits",)


def require_onnx(what: str = "ONNX export") -> None:
    """Raise :class:`MissingExtraError` naming the extra when any module of ``[onnx]`` cannot be imported."""
    for name in ONNX_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or name
            raise MissingExtraError(
                f"{what} needs the optional ONNX extra ({missing} could not be imported): install it with  "
                f"{INSTALL_HINT}"
            ) from None


def onnx_files(folder: Path) -> list[Path]:
    """The graph and its external-data files (everything that holds weights)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.name.startswith(ONNX_NAME) or p.suffix == ".onnx_data")


def weights_size_bytes(folder: Path) -> int:
    """Bytes of weights a device must store: what export.json reports and int8 shrinks."""
    return sum(p.stat().st_size for p in onnx_files(folder))


def export_onnx(model_dir: Path, out_dir: Path, *, opset: int | None = None, trust_remote_code: bool = False) -> None:
    """Run Optimum's exporter on a full (non-adapter) model folder into ``out_dir`` (created if needed)."""
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
            from transformers import AutoConfig, GenerationConfig

            config = AutoConfig.from_pretrained(str(model_dir))
            GenerationConfig.from_model_config(config).save_pretrained(str(out_dir))


def ort_session_options(threads: int | None = None) -> Any:
    """Session options with an explicit thread count (default: torch's), so comparisons are fair."""
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    return so


def load_ort_model(folder: str | Path, *, threads: int | None = None) -> Any:
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


def export_precision(folder: Path) -> str | None:
    """ "int8", "int4" or None (fp32) for an existing export: from its export.json, else from the graph's ops."""
    record = Path(folder) / EXPORT_RECORD
    if record.is_file():
        return json.loads(record.read_text()).get("quantize")
    import onnx

    graph = onnx.load(str(Path(folder) / ONNX_NAME), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    nbits = {a.i for n in graph.node if n.op_type in INT4_OPS for a in n.attribute if a.name == "bits"}
    if nbits:
        return "int4" if 4 in nbits else "int8"  # MatMulNBits carries int4 or weight-only int8 blocks
    return "int8" if ops & set(INT8_OPS) else None
