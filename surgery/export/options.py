"""The knobs of ``surgery export`` and ``surgery deploy`` in one frozen options object.

Pure data (no click, no onnx): the CLI turns the fields into options with
:func:`surgery.commands.options.add_options`, and library callers build it directly. Thresholds left
unset take the defaults of the artefact's precision (:func:`surgery.export.verify.thresholds_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionError
from ..options import check_numbers, opt

QUANTIZE_CHOICES = ("int8",)


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
        None, "onnxruntime dynamic int8 quantization of the exported graph.", choices=QUANTIZE_CHOICES
    )
    int8_keep: tuple[str, ...] = opt(
        (),
        "Node-name substring kept in fp32 when quantizing (repeatable; default: down_proj).",
        flag="--int8-keep-fp32",
        multiple=True,
        metavar="PATTERN",
    )
    opset: int | None = opt(None, "ONNX opset (default: Optimum's for the family).", low=1)

    def __post_init__(self) -> None:
        """Reject impossible values here, so library callers get the same sentence as the CLI."""
        if self.quantize not in (None, *QUANTIZE_CHOICES):
            raise OptionError(f"Unknown --quantize '{self.quantize}'; the supported value is int8.")
        if self.min_top1 is not None and not 0.0 <= self.min_top1 <= 1.0:
            raise OptionError(f"--min-top1 must be between 0 and 1 (got {self.min_top1}).")
        if self.greedy_tokens is not None and self.greedy_tokens < 1:
            raise OptionError(f"--greedy-tokens must be at least 1 (got {self.greedy_tokens}).")
        check_numbers(self)  # finite thresholds: a NaN bound would pass every comparison
