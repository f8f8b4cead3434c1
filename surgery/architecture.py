"""The one architecture check: are two models the same network, so that one's weights fit the other?

``check``, ``patch`` and ``probe`` all compare a base model with its fine-tune. The comparison reads
``config.json`` only (no model code runs, any ``model_type`` works) and compares the fields that fix
tensor shapes; :func:`require_same_shapes` then compares the checkpoints' tensors themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ArchitectureMismatch
from .model_folder import flat_config
from .modelio import ModelSource

#: canonical config field -> the names families store it under (GPT-2 spells several differently)
_SPELLINGS: dict[str, tuple[str, ...]] = {
    "model_type": ("model_type",),
    "hidden_size": ("hidden_size", "n_embd"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer"),
    "intermediate_size": ("intermediate_size",),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "num_key_value_heads": ("num_key_value_heads",),
    "vocab_size": ("vocab_size",),
}
#: every field that must agree for one model's weights to fit the other (check, patch)
SAME_WEIGHTS: tuple[str, ...] = tuple(_SPELLINGS)
#: the fields that must agree for hidden states to be compared layer by layer (probe)
SAME_LAYERS: tuple[str, ...] = ("model_type", "num_hidden_layers", "hidden_size")


class Checkpoint(Protocol):
    """What :func:`require_same_shapes` needs of a checkpoint (``modelio.LazyCheckpoint`` and friends)."""

    def __contains__(self, name: str) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class Architecture:
    """The shape-fixing config fields one model states (canonical names; absent fields are left out)."""

    source: str
    fields: Mapping[str, Any]

    @property
    def model_type(self) -> str:
        return str(self.fields.get("model_type", "unknown"))

    def summary(self) -> dict[str, Any]:
        """The facts a report records: family, depth and width."""
        return {name: self.fields.get(name) for name in SAME_LAYERS}


def _flat_config(source: ModelSource) -> dict[str, Any]:
    """config.json with a multimodal ``text_config`` folded in (top-level keys win)."""
    return flat_config(source.config_dir / "config.json")


def architecture_of(source: ModelSource) -> Architecture:
    """The architecture ``source``'s config states (an adapter's is its base's)."""
    cfg = _flat_config(source)
    fields = {}
    for name, spellings in _SPELLINGS.items():
        stated = [s for s in spellings if s in cfg]
        if stated:
            fields[name] = cfg[stated[0]]
    return Architecture(source.identifier, fields)


def require_same_architecture(
    base: ModelSource, sft: ModelSource, *, fields: tuple[str, ...] = SAME_WEIGHTS, why: str = ""
) -> Architecture:
    """The SFT model's architecture, or :class:`ArchitectureMismatch` naming the first field that differs.

    ``fields`` are compared where either config states them; ``why`` ends the message with what the
    caller cannot do with two different networks.
    """
    a, b = architecture_of(base), architecture_of(sft)
    for key in fields:
        if (key in a.fields or key in b.fields) and a.fields.get(key) != b.fields.get(key):
            raise ArchitectureMismatch(
                f"Base and SFT are not the same architecture: {key} is {a.fields.get(key)!r} in the base "
                f"and {b.fields.get(key)!r} in the SFT model.{' ' + why if why else ''}"
            )
    return b


def require_same_shapes(names: Iterable[str], base: Checkpoint, sft: Checkpoint) -> None:
    """Every named tensor exists in both checkpoints with one shape, or :class:`ArchitectureMismatch`."""
    for name in names:
        for label, ckpt in (("base", base), ("SFT", sft)):
            if name not in ckpt:
                raise ArchitectureMismatch(
                    f"The {label} model has no tensor {name}: base and SFT are not the same architecture."
                )
        a, b = tuple(base.shape(name)), tuple(sft.shape(name))
        if a != b:
            raise ArchitectureMismatch(
                f"{name} has shape {a} in the base and {b} in the SFT: not the same architecture."
            )
