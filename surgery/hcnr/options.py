"""Every knob of HCNR in one frozen options object: the single source of truth for CLI, library and
patch manifest. Defaults are the paper's (docs/method.md); each field's help text says what it changes.

The fields are declared with :func:`surgery.options.opt`; the CLI turns them into click options with
``surgery.commands.options.add_options(PatchOptions)``, so this module knows nothing of click.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import OptionError
from ..options import flag_of, opt


@dataclass(frozen=True)
class PatchOptions:
    r_iw: float = opt(0.5, "Share of neurons kept as candidates inside each matrix (R_IW).")
    r_cw: float = opt(0.4, "Share of matrices (or blocks) kept by relative SFT perturbation (R_CW).")
    neuron: str = opt("column", "A neuron is an input column (paper) or an output row.", choices=("column", "row"))
    layer_unit: str = opt(
        "matrix", "Cross-layer ranking unit: one matrix, or a whole block.", choices=("matrix", "block")
    )
    selection: str = opt(
        "fisher",
        "Fisher priority (HCNR) or random neurons at the same budget (ablation).",
        choices=("fisher", "random"),
    )
    fisher_at: str = opt("sft", "Which model the Fisher scores are taken at.", choices=("sft", "base"))
    fisher_normalize: bool = opt(False, "Normalise each matrix's Fisher vectors to sum 1 before the priority.")
    kind_pooling: str = opt(
        "pooled",
        "How D_hon's kinds of questions (its lines' 'kind' field) make one priority: one score over every line "
        "(pooled, the paper's), or the mean or min of each decline kind's priority (rewards neurons shared by kinds); "
        "auto: mean where D_hon names at least two decline kinds, else pooled.",
        choices=("pooled", "mean", "min", "auto"),
    )
    epsilon: float = opt(1e-10, "Epsilon inside the log of the KL-like priority.")
    compensation: str = opt(
        "exact",
        "Hessian compensation of the restored neurons: exact (the paper's, docs/method.md), summed (paper form), none "
        "(restore only), or protect (match the base on honesty inputs and the SFT model on task inputs).",
        choices=("exact", "summed", "none", "protect"),
    )
    task_weight: float = opt(1.0, "protect only: weight of keeping task-input outputs at SFT's.")
    controls_in: str = opt(
        "hon",
        "protect only: the Hessian term D_hon's answerable controls (lines of kind 'answerable') join: hon (their "
        "outputs matched to the base model's, the method's) or task (kept at the SFT model's, like D_task's).",
        choices=("hon", "task"),
    )
    damp: float = opt(0.01, "Hessian damping as a share of mean(diag H); retried x10, x100 on failure.")
    hessian_data: str = opt(
        "both",
        "Calibration data for the Hessians (protect always uses hon and task apart).",
        choices=("both", "hon", "task"),
    )
    max_samples: int = opt(128, "Examples used from each calibration set.")
    max_length: int = opt(256, "Tokens per calibration example (longer ones are truncated).")
    batch_size: int = opt(8, "Calibration examples per forward/backward pass.")
    seed: int = opt(0, "Seed for sampling calibration examples and for random selection.")

    def __post_init__(self) -> None:
        """Refuse values the method cannot run with, naming the option as the user spells it."""
        for name in ("r_iw", "r_cw"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise OptionError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}.")
        for name in ("epsilon", "task_weight", "damp"):
            if not math.isfinite(getattr(self, name)):
                raise OptionError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}.")
        if self.task_weight < 0:
            raise OptionError(f"--task-weight must be non-negative, got {self.task_weight}.")
        if self.damp <= 0:
            raise OptionError(f"--damp must be positive, got {self.damp}.")
        for name in ("max_samples", "max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be at least 1.")
        if self.controls_in != "hon" and self.compensation != "protect":
            raise OptionError("--controls-in task needs --compensation protect (only protect has a task term).")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise OptionError(f"{flag_of(f)} must be one of {', '.join(choices)}.")

    def to_dict(self) -> dict[str, Any]:
        """Every option by field name, as the manifest and the report record them."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> PatchOptions:
        """A copy with ``changes`` applied (and validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ComputeOptions:
    """Where and how a patch is computed, not what it is: in float32 the patch is the same on any device
    up to floating-point rounding; bfloat16 changes it (the manifest records which was used).

    The CLI fills ``device`` and ``dtype`` from :class:`surgery.devices.DeviceOptions` (one spelling
    for every command) and ``keep_work`` from ``surgery patch --keep-work``."""

    device: str = "auto"
    dtype: str = "float32"
    keep_work: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise OptionError(f"--dtype must be float32 or bfloat16, not {self.dtype!r}.")
