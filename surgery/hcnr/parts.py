"""A block's share of the patch, kept as a work-folder part until the whole file is assembled.

Each selected block's compensation is written as soon as it is solved (its index and values tensors,
plus the manifest records and per-matrix statistics in the part's metadata), and its Hessians are
freed before the next block: the patch is never held in memory whole. :class:`PatchParts` then
hands the streamed writer one tensor at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..patchfile import MatrixStats, TensorRecord
from .compensation import CompensatedPatch
from .hessian import Hessians
from .workdir import WorkFolder


def part_name(block_index: int) -> str:
    return f"patch/{block_index:04d}"


def save_part(work: WorkFolder, block_index: int, patched: CompensatedPatch, hessians: Hessians | None) -> None:
    """One block's entries and everything the manifest and report need about them."""
    tensors: dict[str, torch.Tensor] = {}
    for e in patched.entries:
        tensors[f"{e.weight}::{e.unit}"] = e.index.to(torch.int32)
        tensors[f"{e.weight}::values"] = e.values
    meta = {
        "records": {e.weight: TensorRecord.of(e).to_dict() for e in patched.entries},
        "per_matrix": [[w, m.to_dict()] for w, m in patched.per_matrix.items()],  # model order: sums follow it
        "fallbacks": patched.fallbacks,
        "hessian_tokens": hessians.objective.tokens if hessians else 0,
        "hessian_groups": len(hessians.objective.groups) if hessians else 0,
    }
    work.save(part_name(block_index), tensors, {"part": json.dumps(meta, sort_keys=True)})


@dataclass
class PatchParts:
    """Every block's part, read back: records and statistics in memory, tensors on demand."""

    work: WorkFolder
    records: dict[str, TensorRecord] = field(default_factory=dict)
    per_matrix: dict[str, MatrixStats] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    hessian_tokens: int = 0
    hessian_groups: int = 0
    where: dict[str, str] = field(default_factory=dict)  # tensor name -> part

    @classmethod
    def load(cls, work: WorkFolder, block_indices: list[int]) -> PatchParts:
        parts = cls(work)
        for i in block_indices:
            name = part_name(i)
            meta = json.loads(work.meta(name)["part"])
            for weight, rec in meta["records"].items():
                record = TensorRecord.from_dict(rec, name)
                parts.records[weight] = record
                parts.where.update({spec[0]: name for spec in record.specs(weight)})
            for weight, m in meta["per_matrix"]:
                parts.per_matrix[weight] = MatrixStats.from_dict(m, name)
            parts.fallbacks += meta["fallbacks"]
            parts.hessian_tokens = max(parts.hessian_tokens, meta["hessian_tokens"])
            parts.hessian_groups += meta["hessian_groups"]
        return parts

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor of the patch, read from its block's part."""
        return self.work.load_one(self.where[name], name)

    def residual_ratio(self) -> float | None:
        """Σ patched output drift / Σ SFT output drift over touched matrices (calibration inputs)."""
        return CompensatedPatch(per_matrix=self.per_matrix).residual_ratio()
