"""``surgery patch --plan``: what a run will need (memory, disk, arithmetic) before any weight is read.

The streamed pipeline's peak is set by one block, not by the model: one block's weights, one block's
cached inputs and outputs for a whole calibration set (and their gradients), one batch's autograd
graph through the block, and the largest block's Hessians. The estimate adds those up from the
config, the calibration token counts and the options; it is an upper-side estimate, compared with a
measured run in ``benchmarks/scale_memory.py``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from ..errors import SurgeryError
from .calibration import CalibrationSets
from .hessian import fused_hessian_bytes, fuses_hessians, needs_hessians
from .options import ComputeOptions, PatchOptions
from .skeleton import ModelSkeleton

#: resident memory of Python + torch + transformers + this package before any model is touched
IMPORT_BASELINE = 450 * 2**20
_MB = 2**20


@dataclass(frozen=True)
class Plan:
    """Estimated needs of one ``surgery patch`` run (bytes; FLOPs as multiply-adds x 2)."""

    host_bytes: int
    device_bytes: int  # 0 on the CPU: everything is host memory there
    disk_bytes: int  # peak size of <patch>.work/
    flops: float
    blocks: int
    tokens: int
    detail: dict[str, int]

    def lines(self) -> list[str]:
        """What ``--plan`` prints."""
        out = [
            f"blocks {self.blocks}, calibration tokens {self.tokens}",
            f"peak host memory    {self.host_bytes / _MB:9.0f} MB",
            f"peak device memory  {self.device_bytes / _MB:9.0f} MB",
            f"work folder disk    {self.disk_bytes / _MB:9.0f} MB",
            f"arithmetic          {self.flops / 1e12:9.2f} TFLOP",
        ]
        return out + [f"  {k:<28}{v / _MB:9.0f} MB" for k, v in self.detail.items()]


def _block_numel(skel: ModelSkeleton) -> tuple[int, int, int]:
    """(largest block's parameters, all block parameters, parameters outside the blocks)."""
    sizes = [sum(p.numel() for p in skel.block_module(b).parameters()) for b in skel.blocks]
    total = sum(p.numel() for p in skel.model.parameters())
    return max(sizes), sum(sizes), total - sum(sizes)


def estimate(skel: ModelSkeleton, sets: CalibrationSets, options: PatchOptions, compute: ComputeOptions) -> Plan:
    """The needs of a run on ``skel``'s model (built on meta: nothing is loaded to estimate)."""
    item = 2 if compute.dtype == "bfloat16" else 4
    config: Any = skel.model.config
    hidden = int(config.hidden_size)
    batches = sets.hon + sets.task
    tokens = sum(int(b.input_ids.numel()) for b in batches)
    set_tokens = max(sum(int(b.input_ids.numel()) for b in s) for s in (sets.hon, sets.task))
    batch_tokens = max(int(b.input_ids.numel()) for b in batches)
    block, blocks_total, outside = _block_numel(skel)
    widest = max(max(layer.in_features, layer.out_features) for layer in skel.layers)
    largest_in = max(layer.in_features for layer in skel.layers)
    acts = set_tokens * hidden * item
    detail = {
        "one block's weights": block * item,
        "embeddings and head": outside * item,
        "block inputs + outputs (x2 sets)": 4 * acts,
        "gradients in + out": 2 * acts,
        "one batch's graph": 12 * batch_tokens * widest * 4,
        "Hessians of one block": _hessian_bytes(skel, options),
        "compensation (float64)": 6 * widest * largest_in * 8,
    }
    working = sum(detail.values())
    on_gpu = compute.device.startswith("cuda") or (compute.device == "auto" and torch.cuda.is_available())
    host = IMPORT_BASELINE + (4 * acts if on_gpu else working)
    streams = 2 if options.fisher_at == "base" and needs_hessians(options) else 1
    disk = streams * 2 * (len(skel.blocks) + 1) * acts + 2 * acts
    if fuses_hessians(options, skel.blocks, world_size=1):  # every narrow layer's Hessian sums, until solved
        disk += fused_hessian_bytes(skel.blocks, options)
    flops = 2.0 * blocks_total * tokens * (4 * streams + (1 if needs_hessians(options) else 0))
    return Plan(host, working if on_gpu else 0, disk, flops, len(skel.blocks), tokens, detail)


def _hessian_bytes(skel: ModelSkeleton, options: PatchOptions) -> int:
    """Float32 accumulators plus float64 results for every layer of the largest block (x2 for protect).

    Layers reading one input share a Hessian, so counting each layer apart is an upper bound."""
    if not needs_hessians(options):
        return 0
    largest = max(sum(layer.in_features**2 for layer in b.layers) for b in skel.blocks)
    return largest * (4 + 8) * (2 if options.compensation == "protect" else 1)


def available(out: Path, compute: ComputeOptions) -> dict[str, int]:
    """What this machine has now: free host memory, free device memory, free disk beside the patch."""
    have = {"host": int(psutil.virtual_memory().available), "disk": int(shutil.disk_usage(out.parent).free)}
    if compute.device.startswith("cuda") or (compute.device == "auto" and torch.cuda.is_available()):
        dev = torch.device("cuda" if compute.device == "auto" else compute.device)
        have["device"] = int(torch.cuda.mem_get_info(dev)[0])
    return have


def require_fits(plan: Plan, have: dict[str, int], compute: ComputeOptions) -> None:
    """Refuse to start a run the machine cannot finish, naming the option that would make it fit."""
    fix = "--dtype bfloat16, a smaller --batch-size" if compute.dtype == "float32" else "a smaller --batch-size"
    checks: list[tuple[str, int, str]] = [
        ("host", plan.host_bytes, f"host memory; try {fix} or fewer --max-samples"),
        ("device", plan.device_bytes, f"GPU memory; try {fix}, or --device cpu"),
        ("disk", plan.disk_bytes, "disk beside the patch for <patch>.work/; try fewer --max-samples or --max-length"),
    ]
    for key, need, what in checks:
        if key in have and need > have[key]:
            raise SurgeryError(
                f"This run needs about {need / _MB:.0f} MB of {what} "
                f"(available: {have[key] / _MB:.0f} MB; see surgery patch --plan)."
            )
