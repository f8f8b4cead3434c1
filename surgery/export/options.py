"""The knobs of ``surgery export`` and ``surgery deploy`` in one frozen options object.

Pure data (no click, no onnx): the CLI turns the fields into options with
:func:`surgery.commands.options.add_options`, and library callers build it directly. Thresholds left
unset take the defaults of the artefact's precision (:func:`surgery.export.verify.thresholds_for`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionError
from ..options import check_numbers, opt

QUANTIZE_CHOICES = ("int8", "int4")
#: int4 block sizes onnxruntime's MatMulNBits kernels accept (a power of two, at least 16)
BLOCK_SIZES = (16, 32, 64, 128, 256)
#: int4 weight quantizers of onnxruntime: round-to-nearest, symmetric or with zero points (the default:
#: symmetric rounding made Gemma-3 stop refusing, -40 F1 where rtn-asym lost 4). Its HQQ
#: quantizer is not offered: on the SmolLM2 recipe model it left 0 of 300 answers as fp32 gave them
#: (honesty F1 79.6 -> 25.4, task 53 -> 18; docs/results/deployment.md)
INT4_METHODS = ("rtn", "rtn-asym")
#: int8 quantizers: dynamic (int8 weights and per-tensor int8 activations, MatMulInteger) or weight-only
#: (8-bit MatMulNBits blocks, activations fp32)
INT8_METHODS = ("dynamic", "weight-only")
#: MatMuls int4 puts in 8-bit blocks unless --int4-keep-8bit says otherwise: the MLP down and the attention
#: value projections, the tensors llama.cpp's Q4_K_M keeps at higher precision. With rtn-asym this is what
#: kept honesty on both bundled pairs (F1 vs fp32: SmolLM2 -0.4, Gemma-3 -2.0; every MatMul in 4 bits: -8.5
#: and -3.9) for 198 MB instead of 183 (SmolLM2), 858 instead of 844 (Gemma-3); docs/results/deployment.md
DEFAULT_INT4_KEEP_8BIT = ("down_proj", "v_proj")
#: the --int4-keep-8bit value that keeps nothing in 8 bits (every MatMul 4-bit)
NO_PATTERN = "none"
#: --protect-scale by precision, measured on the bundled SmolLM2 pair (docs/results/deployment.md)
DEFAULT_PROTECT_SCALE = {"int4": 2.0, "int8": 2.0}


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how strictly to check it against PyTorch."""

    verify: bool = opt(True, "Compare the artefact with PyTorch on real prompts and write verify.json.")
    max_abs_diff: float | None = opt(
        None, "Largest allowed |logit difference| (default 1e-3 for fp32, off for int8).", low=0
    )
    mean_abs_diff: float | None = opt(
        None, "Largest allowed mean |logit difference| (default 1e-4 for fp32, off for int8).", low=0
    )
    min_top1: float | None = opt(
        None, "Smallest allowed top-1 agreement over compared positions (default 1.0 fp32, 0.6 int8).", low=0, high=1
    )
    greedy_tokens: int | None = opt(None, "Greedy tokens generated per prompt and compared (default 16).", low=1)
    #: a tri-state flag pair (--same-greedy/--any-greedy), declared by the command itself
    same_greedy: bool | None = opt(
        None, "Require identical greedy generations (default: yes for fp32, no for int8).", cli=False
    )
    prompts_file: Path | None = opt(
        None,
        "JSONL of verification prompts ('prompt', 'question' or 'messages'); default: built-in.",
        flag="--prompts",
        metavar="FILE",
    )
    quantize: str | None = opt(
        None,
        "int8: onnxruntime dynamic int8; int4: weight-only MatMulNBits (onnxruntime's block-wise quantizer).",
        choices=QUANTIZE_CHOICES,
    )
    int8_keep: tuple[str, ...] = opt(
        (),
        "Node-name substring kept in fp32 when quantizing (repeatable; default: down_proj for dynamic int8, "
        "nothing otherwise).",
        flag="--int8-keep-fp32",
        multiple=True,
        metavar="PATTERN",
    )
    int8_method: str = opt(
        "weight-only",
        "int8: weights in 8-bit blocks of --block-size, every MatMul (weight-only; kept honesty within 1 F1 "
        "point on both bundled pairs), or weights and activations in int8 per tensor, down_proj kept fp32 (dynamic).",
        choices=INT8_METHODS,
    )
    int8_per_channel: bool = opt(
        False,
        "int8 dynamic: one weight scale per output channel instead of one per matrix (onnxruntime's per_channel).",
    )
    block_size: int = opt(
        32, "int4 and weight-only int8: weights per quantization block along the input dimension.", low=16
    )
    int4_method: str = opt(
        "rtn-asym",
        "int4: onnxruntime's round-to-nearest quantizer with a zero point per block (rtn-asym) or symmetric "
        "around 0 (rtn).",
        choices=INT4_METHODS,
    )
    int4_keep_8bit: tuple[str, ...] = opt(
        (),
        "int4: node-name substring whose MatMuls get 8-bit blocks instead of 4-bit (repeatable), as llama.cpp's "
        "Q4_K_M keeps some tensors at higher precision (default: down_proj and v_proj; 'none': every MatMul 4-bit).",
        flag="--int4-keep-8bit",
        multiple=True,
        metavar="PATTERN",
    )
    accuracy_level: int | None = opt(
        None,
        "int4 and weight-only int8: MatMulNBits accuracy level (1 fp32, 2 fp16, 3 bf16, 4 int8 compute; "
        "default: 4 for weight-only int8, onnxruntime's for int4).",
        low=0,
        high=4,
    )
    protect_honesty: Path | None = opt(
        None,
        "The honesty patch: scale its restored input columns up before quantizing (folded, fp32 unchanged).",
        metavar="PATCH",
    )
    protect_scale: float | None = opt(
        None,
        "--protect-honesty: factor on the protected weight columns (their activations get its inverse); "
        "a power of two (default: 2 for int4, 2 for int8).",
        above=0,
    )
    honesty_prompts: int = opt(
        40, "Held-out honesty items on which a quantized export must answer like fp32 (0: no check).", low=0
    )
    honesty_benchmark: str = opt(
        "selfaware", "Benchmark name or JSONL of the honesty check's items (held-out 'eval' split)."
    )
    max_honesty_drop: float = opt(
        10.0,
        "Largest allowed drop of honesty F1, and rise of refusal on answerable items, of a quantized "
        "export against fp32 (points).",
        low=0,
    )
    opset: int | None = opt(None, "ONNX opset (default: Optimum's for the family).", low=1)

    def __post_init__(self) -> None:
        """Reject impossible values here, so library callers get the same sentence as the CLI."""
        if self.quantize not in (None, *QUANTIZE_CHOICES):
            raise OptionError(f"Unknown --quantize '{self.quantize}'; use int8 or int4.")
        if self.int8_method not in INT8_METHODS:
            raise OptionError(f"--int8-method must be one of {', '.join(INT8_METHODS)} (got {self.int8_method!r}).")
        if self.int4_method not in INT4_METHODS:
            raise OptionError(f"--int4-method must be one of {', '.join(INT4_METHODS)} (got {self.int4_method!r}).")
        if NO_PATTERN in self.int4_keep_8bit and len(set(self.int4_keep_8bit)) > 1:
            raise OptionError("--int4-keep-8bit none keeps nothing in 8 bits: give it alone, or only patterns.")
        if self.block_size not in BLOCK_SIZES:
            sizes = ", ".join(map(str, BLOCK_SIZES))
            raise OptionError(f"--block-size must be one of {sizes} (got {self.block_size}).")
        if self.protect_honesty is not None and self.quantize is None:
            raise OptionError("--protect-honesty protects columns from quantization: add --quantize int8 or int4.")
        scale = self.protect_scale
        if scale is not None and (not 0 < scale < math.inf or scale == 1 or math.log2(scale) % 1):
            raise OptionError(f"--protect-scale must be a power of two other than 1, e.g. 2 or 0.5 (got {scale}).")
        if self.min_top1 is not None and not 0.0 <= self.min_top1 <= 1.0:
            raise OptionError(f"--min-top1 must be between 0 and 1 (got {self.min_top1}).")
        if self.greedy_tokens is not None and self.greedy_tokens < 1:
            raise OptionError(f"--greedy-tokens must be at least 1 (got {self.greedy_tokens}).")
        check_numbers(self)  # finite thresholds: a NaN bound would pass every comparison

    @property
    def keep_8bit(self) -> tuple[str, ...]:
        """The int4 node-name patterns kept in 8-bit blocks: the user's, 'none' for none, else the default."""
        if not self.int4_keep_8bit:
            return DEFAULT_INT4_KEEP_8BIT
        return tuple(p for p in self.int4_keep_8bit if p != NO_PATTERN)

    @property
    def scale(self) -> float:
        """The factor on the protected columns: the user's, or the measured default of the precision."""
        if self.protect_scale is not None:
            return self.protect_scale
        return DEFAULT_PROTECT_SCALE.get(self.quantize or "", 2.0)
