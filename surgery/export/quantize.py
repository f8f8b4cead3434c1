"""onnxruntime quantization of an exported folder, in place: weight-only int8/int4 or dynamic int8.

int4 is onnxruntime's own ``MatMulNBitsQuantizer`` (round to nearest, block-wise along the input dimension,
``MatMulNBits`` operators); only the weights are quantized, activations stay fp32, so the outliers that make
int8 keep ``down_proj`` in fp32 do not matter and every MatMul with a constant weight is quantized:
in 4-bit blocks, except those the caller keeps in 8-bit blocks (``surgery export`` keeps the down and
value projections there by default, like llama.cpp's Q4_K_M).

Weights of the linear layers become int8 and activations are quantized per tensor on the fly. The MLP
down projections are kept in fp32 by default: their inputs carry the large activation outliers of
Llama-style models, and per-tensor activation quantization there wrecks the logits. On
SmolLM2-135M-Instruct (verify.py's 8 default prompts, against PyTorch) quantizing every MatMul gave a
mean |Δlogit| of 3.95 and 50.3% top-1 agreement (222 MB); keeping the 30 down projections in fp32 gave
1.3 and 84.8% (301 MB; fp32: 539 MB). The embedding Gather stays fp32; a MatMul whose weight is computed
in the graph (a tied lm_head, for example) is skipped by the quantizer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import MissingExtraError
from .onnx import INSTALL_HINT, ONNX_NAME, onnx_files, weights_size_bytes

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


def integer_matmuls(model_path: Path, op_type: str = "MatMulInteger") -> int:
    """How many MatMuls really became ``op_type`` (the quantizers silently skip some)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return sum(n.op_type == op_type for n in graph.node)


def _replace_graph(folder: Path, tmp: Path, external: bool) -> None:
    """Make the quantized ``tmp`` the folder's ``model.onnx`` (and remove the fp32 graph and its data)."""
    for p in onnx_files(folder):
        if p != tmp and not p.name.startswith(tmp.name):
            p.unlink()
    if external:
        _rename_external_data(tmp, folder / ONNX_NAME)
    else:
        os.replace(tmp, folder / ONNX_NAME)


@contextlib.contextmanager
def _quiet_root() -> Iterator[None]:
    """The quantizers log one INFO line per tensor on the root logger: silence them below WARNING."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


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
    with _quiet_root():
        quantize_dynamic(
            str(src),
            str(tmp),
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=kept,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            use_external_data_format=before > EXTERNAL_DATA_BYTES,
        )
    method = {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8", "per_channel": per_channel}
    # what was done, not what was asked: a MatMul on a computed weight is skipped
    return _finish(folder, tmp, "MatMulInteger", len(nodes), before, exclude, t0, method)


#: MatMulNBits accuracy level of 8-bit weights unless the user sets one: int8 compute. Without it
#: onnxruntime dequantizes the weights at every call (1.4 against 9.7 tokens/s on SmolLM2, 1 thread)
INT8_WEIGHT_ONLY_ACCURACY = 4


def quantize_weight_only(
    folder: Path,
    *,
    bits: int = 4,
    block_size: int = 32,
    accuracy_level: int | None = None,
    exclude: tuple[str, ...] = (),
    method: str = "rtn",
    keep_8bit: tuple[str, ...] = (),
) -> dict:
    """Replace ``folder/model.onnx`` by its weight-only version (``MatMulNBits``); returns what was done.

    ``bits=4`` is int4; ``bits=8`` is weight-only int8: unlike dynamic int8 the activations are not
    quantized per tensor, so no scale meets the outliers of ``down_proj``'s inputs and every MatMul with
    a constant weight is quantized, each block of ``block_size`` weights with its own scale (accuracy
    level :data:`INT8_WEIGHT_ONLY_ACCURACY` unless given). ``method``: ``rtn`` rounds each block to the
    nearest level symmetric around 0; ``rtn-asym`` adds a zero point per block (the levels follow the
    block's own range).

    ``keep_8bit`` (int4 only): MatMuls whose node name contains one of these substrings get 8-bit blocks
    instead (int8 compute, same ``method``), the way llama.cpp's Q4_K_M keeps some tensors at higher
    precision; a second pass of the same quantizer over the MatMuls the first one left."""
    if bits == 8 and accuracy_level is None:
        accuracy_level = INT8_WEIGHT_ONLY_ACCURACY
    import onnx

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:  # onnxruntime >= 1.23's quantizer needs onnx-ir, which older installs lack
        raise MissingExtraError(
            f"--quantize int{bits} needs onnxruntime's MatMulNBits quantizer ({exc.name} could not be imported): "
            f"install it with  {INSTALL_HINT}"
        ) from None

    folder = Path(folder)
    src = folder / ONNX_NAME
    nodes = matmul_nodes(src)
    kept = [n for n in nodes if any(pat in n for pat in exclude)]
    eight = [n for n in nodes if n not in kept and any(pat in n for pat in keep_8bit)] if bits == 4 else []
    before = weights_size_bytes(folder)
    external = before > EXTERNAL_DATA_BYTES
    tmp = folder / f"model.int{bits}.tmp.onnx"
    t0 = time.perf_counter()
    symmetric = method == "rtn"

    def quantized(model: Any, n_bits: int, level: int | None, skip: list[str]) -> Any:
        """One pass of onnxruntime's quantizer over the MatMuls not in ``skip`` (its ``ONNXModel``)."""
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=n_bits,
            block_size=block_size,
            is_symmetric=symmetric,
            accuracy_level=level,
            nodes_to_exclude=skip,
            op_types_to_quantize=QUANTIZED_OPS,
        )
        quantizer.process()
        return quantizer.model

    with _quiet_root():
        result = quantized(onnx.load(str(src), load_external_data=True), bits, accuracy_level, kept + eight)
        if eight:  # the second pass sees only the MatMuls left: MatMulNBits nodes are another op type
            rest = [n for n in nodes if n not in eight]
            result = quantized(result.model, 8, INT8_WEIGHT_ONLY_ACCURACY, rest)
        result.save_model_to_file(str(tmp), use_external_data_format=external)
    done = {
        "method": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
        **({"int4_method": method} if bits == 4 else {"int8_method": "weight-only"}),
        "algorithm": "round-to-nearest",
        "bits": bits,
        "block_size": block_size,
        "symmetric": symmetric,
        "accuracy_level": accuracy_level,
    }
    if bits == 4:
        done["kept_8bit_patterns"] = list(keep_8bit)
        done["matmuls_8bit"] = len(eight)
        done["accuracy_level_8bit"] = INT8_WEIGHT_ONLY_ACCURACY if eight else None
    return _finish(folder, tmp, "MatMulNBits", len(nodes), before, exclude, t0, done, name=f"int{bits}")


def _finish(
    folder: Path,
    tmp: Path,
    op: str,
    matmuls: int,
    before: int,
    exclude: tuple[str, ...],
    t0: float,
    method: dict,
    *,
    name: str = "int8",
) -> dict:
    """Put the quantized graph ``tmp`` in place and return what was done (export.json), counted from the graph."""
    seconds = time.perf_counter() - t0
    quantized = integer_matmuls(tmp, op)
    _replace_graph(folder, tmp, before > EXTERNAL_DATA_BYTES)
    after = weights_size_bytes(folder)
    log.info(
        "%s: %d of %d MatMuls quantized, %.0f MB -> %.0f MB in %.1f s",
        name,
        quantized,
        matmuls,
        before / 1e6,
        after / 1e6,
        seconds,
    )
    return {
        **method,
        "op_types": list(QUANTIZED_OPS),
        "kept_fp32_patterns": list(exclude),
        "matmuls": matmuls,
        "matmuls_quantized": quantized,
        "matmuls_kept_fp32": matmuls - quantized,
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
