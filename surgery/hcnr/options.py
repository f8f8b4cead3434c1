"""Every knob of HCNR in one frozen options object: the single source of truth for CLI, library and
patch manifest. Defaults are METHOD.md's; each field's help text says what it changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import click


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, flag: str | None = None):
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass(frozen=True)
class PatchOptions:
    r_iw: float = _opt(0.5, "Share of neurons kept as candidates inside each matrix (R_IW).")
    r_cw: float = _opt(0.4, "Share of matrices (or blocks) kept by relative SFT perturbation (R_CW).")
    neuron: str = _opt("column", "A neuron is an input column (paper) or an output row.", ("column", "row"))
    layer_unit: str = _opt("matrix", "Cross-layer ranking unit: one matrix, or a whole block.", ("matrix", "block"))
    selection: str = _opt("fisher", "Fisher priority (HCNR) or random neurons at the same budget (ablation).",
                          ("fisher", "random"))
    fisher_at: str = _opt("sft", "Which model the Fisher scores are taken at.", ("sft", "base"))
    fisher_normalize: bool = _opt(False, "Normalise each matrix's Fisher vectors to sum 1 before the priority.")
    epsilon: float = _opt(1e-10, "Epsilon inside the log of the KL-like priority.")
    compensation: str = _opt(
        "exact",
        "Hessian compensation of the restored neurons: exact (METHOD.md), summed (paper form), none "
        "(restore only), or protect (match the base on honesty inputs and the SFT model on task inputs).",
        ("exact", "summed", "none", "protect"))
    task_weight: float = _opt(1.0, "protect only: weight of keeping task-input outputs at SFT's.")
    damp: float = _opt(0.01, "Hessian damping as a share of mean(diag H); retried x10, x100 on failure.")
    hessian_data: str = _opt("both", "Calibration data for the Hessians (protect always uses hon and task apart).",
                             ("both", "hon", "task"))
    max_samples: int = _opt(128, "Examples used from each calibration set.")
    max_length: int = _opt(256, "Tokens per calibration example (longer ones are truncated).")
    batch_size: int = _opt(8, "Calibration examples per forward/backward pass.")
    seed: int = _opt(0, "Seed for sampling calibration examples and for random selection.")

    def __post_init__(self) -> None:
        from ..errors import SurgeryError

        for name in ("r_iw", "r_cw"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise SurgeryError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}.")
        if self.task_weight < 0:
            raise SurgeryError(f"--task-weight must be non-negative, got {self.task_weight}.")
        if self.damp <= 0:
            raise SurgeryError(f"--damp must be positive, got {self.damp}.")
        for name in ("max_samples", "max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise SurgeryError(f"--{name.replace('_', '-')} must be at least 1.")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise SurgeryError(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "PatchOptions":
        return dataclasses.replace(self, **changes)


def add_patch_options(fn: Callable) -> Callable:
    """Decorate a click command with one option per PatchOptions field (mergekit-style)."""
    for f in reversed(dataclasses.fields(PatchOptions)):
        flag = "--" + f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        if f.type in ("bool", bool):
            fn = click.option(f"{flag}/--no-{flag[2:]}", default=f.default, show_default=True,
                              help=f.metadata["help"])(fn)
        else:
            typ = click.Choice(choices) if choices else {"float": float, "int": int}.get(str(f.type), str)
            fn = click.option(flag, f.name, type=typ, default=f.default, show_default=True,
                              help=f.metadata["help"])(fn)
    return fn


def options_from_kwargs(kwargs: dict[str, Any]) -> PatchOptions:
    """Pop the PatchOptions fields out of a click kwargs dict."""
    names = {f.name for f in dataclasses.fields(PatchOptions)}
    return PatchOptions(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
