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
from .modelcard import CARD_NAME, Evaluation, build_card
from .modelio import (
    LazyCheckpoint,
    ModelSource,
    StateDictCheckpoint,
    locate,
    open_checkpoint,
    write_safetensors_folder,
)
from .patchfile import PatchEntry, PatchManifest, apply_entry, read_patch
from .progress import progress
from .provenance import command_line
from .revision import hub_snapshot

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
    command: str | None = None,
    evaluation: Evaluation | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Write ``out_dir`` = SFT with the patch applied; returns the provenance record written beside it.

    The folder also gets a model card (``README.md``, :func:`repaired_card`) naming the model ``name``
    (default: the folder's name), quoting ``evaluation`` and ``command`` (default: this process's command line).
    """
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
        extra_files={
            "surgery_provenance.json": json.dumps(provenance, indent=2),
            CARD_NAME: repaired_card(
                manifest,
                src,
                patch,
                name=name or Path(out_dir).name,
                command=command if command is not None else command_line(),
                evaluation=evaluation,
            ),
        },
    )
    log.info("wrote %s (%d tensors patched)", out_dir, len(entries))
    return provenance


def sft_revision(src: ModelSource, manifest: PatchManifest) -> dict[str, Any] | None:
    """The SFT's revision for a card: its hub commit when it is a cache snapshot, else the one in the patch.

    (A local folder's fingerprint reads every weight file; the patch recorded it when it was made, and
    ``apply`` has just checked every tensor the patch touches against that SFT.)
    """
    snapshot = hub_snapshot(src.path)
    if snapshot is not None:
        return {"kind": "hub", "repo": snapshot[0], "commit": snapshot[1]}
    return (manifest.revisions or {}).get("sft")


def repaired_card(
    manifest: PatchManifest,
    src: ModelSource,
    patch: Path,
    *,
    name: str,
    command: str | None,
    evaluation: Evaluation | None = None,
    artefact: str = "transformers",
    quantize: str | None = None,
) -> str:
    """The ``README.md`` of SFT + ``patch`` (:func:`surgery.modelcard.build_card` with this run's facts)."""
    return build_card(
        manifest,
        name=name,
        sft=src.identifier,
        patch=Path(patch).name,
        artefact=artefact,
        sft_revision=sft_revision(src, manifest),
        command=command,
        patch_command=patch_command(patch),
        evaluation=evaluation,
        quantize=quantize,
    )


#: a ``<patch>.command.txt`` longer than this is not one command line; the card leaves it out
MAX_COMMAND_BYTES = 64 * 1024


def patch_command(patch: Path) -> str | None:
    """The command that made ``patch``, from the ``<patch>.command.txt`` that ``surgery patch`` writes beside it."""
    path = Path(str(patch) + ".command.txt")
    try:
        if not path.is_file() or path.stat().st_size > MAX_COMMAND_BYTES:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
