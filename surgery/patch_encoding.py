"""How a patch stores its new neuron values: in full, or as the change against the SFT weights, compressed.

A patch's neurons are whole columns (or rows) of a weight. ``full`` stores their new values in the model's
dtype (what every patch stored before encodings existed). The compact encodings store ``delta = new − SFT``
on the same neurons instead, which is small and smooth enough to compress:

- ``bf16``: the delta rounded to bfloat16 (half of a float32 patch);
- ``int8``: the delta as symmetric int8 with one float32 scale per neuron (per column, or per row for row
  neurons): ``q = round(delta / s)``, ``s = max|delta| / 127`` (a quarter of a float32 patch).

Decoding needs the SFT tensor and is one fixed sequence of element-wise float operations
(``(sft + q·s)`` in float32, cast to the model's dtype, see :func:`decode_values`), so the patched tensor is
bit-identical on every run and machine and the patch's ``patched_sha256`` still proves the result. These are
pure tensor functions; the file format around them is :mod:`surgery.patchfile`.
"""

from __future__ import annotations

import torch

from .errors import PatchFormatError

#: every encoding a patch may have; ``full`` is the format-version-2 layout
ENCODINGS = ("full", "bf16", "int8")
#: the dtype an encoding stores its delta in
DELTA_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "int8": torch.int8}
#: the largest int8 code used (symmetric: -127..127)
INT8_MAX = 127
SCALE_DTYPE = torch.float32


def require_encoding(encoding: object, where: str = "") -> str:
    """``encoding`` if it is one of :data:`ENCODINGS`; anything else is one :class:`PatchFormatError`."""
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise PatchFormatError(f"{where}encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}.")
    return encoding


def compute_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The dtype deltas are formed and decoded in: float32, or float64 for a float64 model."""
    return torch.promote_types(model_dtype, torch.float32)


def neurons(canonical: torch.Tensor, index: torch.Tensor, unit: str) -> torch.Tensor:
    """The patch's neurons of a canonical (out x in) matrix: columns (out x k) or rows (k x in)."""
    idx = index.long()
    return canonical[:, idx] if unit == "cols" else canonical[idx, :]


def _per_neuron(scale: torch.Tensor, unit: str) -> torch.Tensor:
    """A (k,) scale shaped to broadcast over the (out x k) columns or (k x in) rows it belongs to."""
    return scale[None, :] if unit == "cols" else scale[:, None]


def encode_delta(delta: torch.Tensor, unit: str, encoding: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The stored form of ``delta`` (new − SFT on the neurons, float): ``(delta_tensor, scale or None)``."""
    if encoding == "bf16":
        return delta.to(torch.bfloat16).contiguous(), None
    if encoding != "int8":
        raise ValueError(f"no delta for encoding {encoding!r}")
    d = delta.to(torch.float32)
    peak = d.abs().amax(dim=0 if unit == "cols" else 1)
    scale = (peak / INT8_MAX).to(SCALE_DTYPE)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an unchanged neuron: all codes 0
    q = torch.round(d / _per_neuron(safe, unit)).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def delta_of(delta: torch.Tensor, scale: torch.Tensor | None, unit: str, dtype: torch.dtype) -> torch.Tensor:
    """The change a stored delta stands for, in ``dtype`` (the float the decoder adds to the SFT neurons)."""
    d = delta.to(dtype)
    return d if scale is None else d * _per_neuron(scale.to(dtype), unit)


def decode_values(
    sft_neurons: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor | None, unit: str
) -> torch.Tensor:
    """The new neuron values, in the SFT's dtype: ``(sft + delta·scale)`` computed in :func:`compute_dtype`.

    Element-wise only (no reductions, no fused multiply-add), so the result is the same bits everywhere."""
    work = compute_dtype(sft_neurons.dtype)
    return (sft_neurons.to(work) + delta_of(delta, scale, unit, work)).to(sft_neurons.dtype)


def check_payload(name: str, encoding: str, delta: torch.Tensor, scale: torch.Tensor | None, unit: str) -> None:
    """An encoded neuron block is what its encoding stores: delta dtype, one finite non-negative scale per neuron.

    ``delta``'s shape is checked by the caller against the matrix; ``name`` prefixes every message."""
    want = DELTA_DTYPES.get(encoding)
    if want is None:
        raise PatchFormatError(f"{name}: encoding {encoding!r} stores no delta.")
    if delta.dtype != want:
        raise PatchFormatError(
            f"{name}::delta has dtype {str(delta.dtype).replace('torch.', '')}; "
            f"encoding {encoding} stores {str(want).replace('torch.', '')}."
        )
    if encoding == "bf16":
        if scale is not None:
            raise PatchFormatError(f"{name}: encoding bf16 has no scales, but the entry holds some.")
        if not bool(torch.isfinite(delta).all()):
            raise PatchFormatError(f"{name}::delta contains NaN or Inf (damaged or hostile patch).")
        return
    k = delta.shape[1] if unit == "cols" else delta.shape[0]
    if scale is None or scale.dtype != SCALE_DTYPE or tuple(scale.shape) != (k,):
        got = "none" if scale is None else f"{str(scale.dtype).replace('torch.', '')} {tuple(scale.shape)}"
        raise PatchFormatError(f"{name}::scale must be float32 of shape ({k},), one per neuron; it is {got}.")
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise PatchFormatError(f"{name}::scale holds a negative, NaN or Inf scale (damaged or hostile patch).")
