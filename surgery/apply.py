"""`surgery apply`: splice a patch into the SFT model and write a standard Hugging Face folder.

The whole patch is validated when it is read (:func:`surgery.patchfile.read_patch`), every touched tensor's
shape is checked against the model before anything is written, and every touched tensor is checked against
the patch's fingerprints before and after the splice (and the result for NaN/Inf), so the output is
bit-for-bit what `surgery patch` computed, or nothing is written at all.

It streams: each tensor is read (an adapter SFT merged into it, :mod:`surgery.adapter_merge`), checked,
spliced and written to its output shard before the next is read, so memory holds about one tensor
whatever the model's size (``tests/models/test_apply_memory.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import ArchitectureMismatch
from .model_folder import require_finite
from .modelio import LazyCheckpoint, StateDictCheckpoint, locate, open_checkpoint, write_safetensors_folder
from .patchfile import PatchEntry, apply_entry, read_patch
from .progress import progress

log = logging.getLogger(__name__)


def check_model_fits(ckpt: LazyCheckpoint | StateDictCheckpoint, entries: list[PatchEntry]) -> None:
    """Every weight the patch touches exists in the model with the recorded shape (checked before writing)."""
    for e in entries:
        if e.weight not in ckpt:
            raise ArchitectureMismatch(
                f"The model has no tensor {e.weight}: this patch was made for another architecture."
            )
        shape = tuple(ckpt.shape(e.weight))
        if shape != e.shape:
            raise ArchitectureMismatch(
                f"Shape mismatch for {e.weight}: the model has {shape}, the patch expects {e.shape} "
                "(a patch for another architecture)."
            )


def apply_patch(
    sft: str,
    patch: Path,
    out_dir: Path,
    *,
    base: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    max_shard_bytes: int = 2 * 1024**3,
) -> dict[str, Any]:
    """Write ``out_dir`` = SFT with the patch applied; returns the provenance record written beside it."""
    manifest, entries = read_patch(patch)
    src = locate(sft, base)
    ckpt = open_checkpoint(src, allow_pickle=allow_pickle)
    check_model_fits(ckpt, entries)
    by_name = {e.weight: e for e in entries}

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name in progress(sorted(ckpt.keys()), desc="apply", unit="tensor"):
            t = require_finite(name, ckpt.get(name), src.identifier)
            if name in by_name:
                t = apply_entry(t, by_name[name])
            yield name, t

    side = [src.path, src.config_dir] if src.adapter_base is not None else [src.path]
    provenance: dict[str, Any] = {
        "patched_by": "surgery apply",
        "sft": src.identifier,
        "patch": str(patch),
        "patch_base": manifest.base,
        "tensors_patched": len(entries),
        "parameters_changed": manifest.stats.parameters_changed if manifest.stats is not None else None,
    }
    write_safetensors_folder(
        tensors(),
        Path(out_dir),
        side,
        max_shard_bytes,
        extra_files={"surgery_provenance.json": json.dumps(provenance, indent=2)},
    )
    log.info("wrote %s (%d tensors patched)", out_dir, len(entries))
    return provenance
