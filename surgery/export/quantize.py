"""onnxruntime dynamic int8 quantization of an exported folder, in place.

Weights of the linear layers become int8 and activations are quantized per tensor on the fly. The MLP
down projections are kept in fp32 by default: their inputs carry the large activation outliers of
Llama-style models, and per-tensor activation quantization there wrecks the logits. On
SmolLM2-135M-Instruct (verify.py's 8 default prompts, against PyTorch) quantizing every MatMul gave a
mean |Δlogit| of 3.95 and 50.3% top-1 agreement (222 MB); keeping the 30 down projections in fp32 gave
1.3 and 84.8% (301 MB; fp32: 539 MB). The embedding Gather stays fp32; a MatMul whose weight is computed
in the graph (a tied lm_head, for example) is skipped by the quantizer.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .onnx import ONNX_NAME, onnx_files, weights_size_bytes

log = logging.getLogger(__name__)

#: node-name substrings kept in fp32 unless the user says otherwise
DEFAULT_INT8_EXCLUDE: tuple[str, ...] = ("down_proj",)
QUANTIZED_OPS = ("MatMul",)
#: graphs this large must keep their weights in external data (protobuf's 2 GB limit)
EXTERNAL_DATA_BYTES = 1_800_000_000


def matmul_nodes(model_path: Path) -> list[str]:
    """Names of the nodes the quantizer may touch (the keep-fp32 patterns are matched against them)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in QUANTIZED_OPS]


def integer_matmuls(model_path: Path) -> int:
    """How many MatMuls really became int8 (the quantizer silently skips some)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return sum(n.op_type == "MatMulInteger" for n in graph.node)


def quantize_int8(folder: Path, *, exclude: tuple[str, ...] | None = None, per_channel: bool = False) -> dict:
    """Replace ``folder/model.onnx`` by its dynamic-int8 version; returns what was done (for export.json)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    src = folder / ONNX_NAME
    exclude = DEFAULT_INT8_EXCLUDE if exclude is None else tuple(exclude)
    nodes = matmul_nodes(src)
    kept = [n for n in nodes if any(pat in n for pat in exclude)]
    before = weights_size_bytes(folder)
    tmp = folder / "model.int8.tmp.onnx"
    t0 = time.perf_counter()
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs one INFO line per tensor on the root logger
    try:
        quantize_dynamic(
            str(src),
            str(tmp),
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=kept,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            use_external_data_format=before > EXTERNAL_DATA_BYTES,
        )
    finally:
        root.setLevel(level)
    seconds = time.perf_counter() - t0
    quantized = integer_matmuls(tmp)  # what was done, not what was asked: a MatMul on a computed weight is skipped
    for p in onnx_files(folder):
        if p != tmp:
            p.unlink()
    if before > EXTERNAL_DATA_BYTES:
        _rename_external_data(tmp, folder / ONNX_NAME)
    else:
        os.replace(tmp, src)
    after = weights_size_bytes(folder)
    log.info(
        "int8: %d of %d MatMuls quantized, %.0f MB -> %.0f MB in %.1f s",
        quantized,
        len(nodes),
        before / 1e6,
        after / 1e6,
        seconds,
    )
    return {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "QInt8",
        "per_channel": per_channel,
        "op_types": list(QUANTIZED_OPS),
        "kept_fp32_patterns": list(exclude),
        "matmuls": len(nodes),
        "matmuls_quantized": quantized,
        "matmuls_kept_fp32": len(nodes) - quantized,
        "bytes_before": before,
        "bytes_after": after,
        "seconds": round(seconds, 2),
    }


def _rename_external_data(tmp: Path, final: Path) -> None:
    """Save a large quantized graph as ``model.onnx`` + ``model.onnx_data`` (the names Optimum looks for)."""
    import onnx

    model = onnx.load(str(tmp), load_external_data=True)
    onnx.save_model(
        model,
        str(final),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=final.name + "_data",
        size_threshold=1024,
    )
    for p in (tmp, tmp.with_name(tmp.name + ".data")):  # quantize_dynamic names its data "<output>.data"
        p.unlink(missing_ok=True)
