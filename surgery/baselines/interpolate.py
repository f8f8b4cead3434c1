"""Whole-model roll-back ``W0 + α·(W1 − W0)`` (task arithmetic): the fix users try first.

Every floating-point tensor is interpolated (embeddings, norms and heads too, unlike HCNR), computed
as ``(1 − α)·W0 + α·W1`` in float32 (the same line, better conditioned near the ends); the end points
are taken as they are, so α = 0 gives the base and α = 1 the SFT model bit for bit (signed zeros
included). Tensors are streamed one at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import SurgeryError
from ..modelio import locate, open_checkpoint, write_safetensors_folder
from ..progress import progress


def interpolate_tensor(w0: torch.Tensor, w1: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 − α)·w0 + α·w1`` in float32, returned in ``w1``'s dtype; non-float tensors are taken from ``w1``."""
    if w0.shape != w1.shape:
        raise SurgeryError(f"Cannot interpolate tensors of shapes {tuple(w0.shape)} and {tuple(w1.shape)}.")
    if not w1.is_floating_point() or alpha == 1.0:
        return w1.clone()
    if alpha == 0.0:
        return w0.to(w1.dtype, copy=True)
    mixed = (1.0 - alpha) * w0.to(torch.float32) + alpha * w1.to(torch.float32)
    return mixed.to(w1.dtype)


def interpolated_tensors(base_ckpt, sft_ckpt, alpha: float) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the SFT checkpoint, interpolated towards the base where the base has it."""
    for name in progress(sorted(sft_ckpt.keys()), desc=f"interpolate α={alpha:g}", unit="tensor"):
        w1 = sft_ckpt.get(name)
        if name not in base_ckpt:
            raise SurgeryError(f"The base model has no tensor {name}: base and SFT differ in architecture.")
        yield name, interpolate_tensor(base_ckpt.get(name), w1, alpha)


def interpolate_models(base: str, sft: str, alpha: float, out_dir: str | Path, *, allow_pickle: bool = False) -> dict:
    """Write ``W0 + α·(W1 − W0)`` for base ``base`` and SFT ``sft`` as a standard HF folder."""
    if not 0.0 <= alpha <= 1.0:
        raise SurgeryError(f"The interpolation weight α must be in [0, 1], got {alpha}.")
    base_src, sft_src = locate(base), locate(sft, base)
    base_ckpt = open_checkpoint(base_src, allow_pickle=allow_pickle)
    sft_ckpt = open_checkpoint(sft_src, allow_pickle=allow_pickle)
    side = [sft_src.path, sft_src.config_dir] if sft_src.adapter_base is not None else [sft_src.path]
    info = {"made_by": "interpolation", "alpha": alpha, "base": base_src.identifier, "sft": sft_src.identifier}
    write_safetensors_folder(
        interpolated_tensors(base_ckpt, sft_ckpt, alpha),
        Path(out_dir),
        side,
        extra_files={"surgery_provenance.json": json.dumps(info, indent=2)},
    )
    info["checkpoint_bytes"] = sum(f.stat().st_size for f in Path(out_dir).glob("*.safetensors"))
    return info
