"""One options base for the re-tuning baselines (RAIT and DPO): budgets, LoRA shape, optimiser, seed.

Both baselines train the SFT model on the same kind of budget (a number of examples, seconds, or
both), so the fields and their validation live here once; :class:`~surgery.baselines.rait.RaitOptions`
and :class:`~surgery.baselines.dpo.DpoOptions` only name themselves, pick their default learning rates
and (DPO) add ``beta``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from ..errors import OptionError
from ..options import opt

MODES = ("lora", "full")


@dataclass(frozen=True)
class TrainOptions:
    """How a baseline re-tunes the model; ``examples``/``seconds`` are the budgets (either or both)."""

    #: the method's name in messages ("RAIT", "DPO") and what one training example is called
    METHOD: ClassVar[str] = "Training"
    UNIT: ClassVar[str] = "example"
    #: learning rate used when ``lr`` is None, per mode
    DEFAULT_LR: ClassVar[dict[str, float]] = {"lora": 5e-4, "full": 1e-5}

    mode: str = opt("lora", "Train a LoRA adapter (merged afterwards) or every weight.", choices=MODES)
    examples: int | None = opt(480, "Budget: how many training examples are used (None: only the time budget).")
    seconds: float | None = opt(None, "Budget: wall-clock seconds; training stops after the step that crosses it.")
    r: int = opt(16, "LoRA rank.")
    alpha: int = opt(32, "LoRA alpha.")
    lr: float | None = opt(None, "Learning rate (default: the method's own for the mode).")
    batch_size: int = opt(8, "Training batch size.")
    max_length: int = opt(96, "Token limit of one example (prompt and response).")
    seed: int = opt(0, "Seed of the LoRA initialisation and the data order.")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OptionError(f"{self.METHOD} mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        if self.examples is None and self.seconds is None:
            raise OptionError(f"{self.METHOD} needs a budget: a number of {self.UNIT}s, seconds, or both.")
        if self.examples is not None and self.examples < 1:
            raise OptionError(f"{self.METHOD} needs at least one {self.UNIT}, got {self.examples}.")
        if self.seconds is not None and self.seconds <= 0:
            raise OptionError(f"The {self.METHOD} time budget must be positive, got {self.seconds}.")

    @property
    def learning_rate(self) -> float:
        """``lr``, or the method's default for the mode."""
        return self.lr if self.lr is not None else self.DEFAULT_LR[self.mode]

    def to_dict(self) -> dict:
        """Every field with the learning rate actually used (what the result records)."""
        return {**asdict(self), "lr": self.learning_rate}
