"""Running the streamed pipeline's stages on their own, for tests that check them against whole-model maths."""

from __future__ import annotations

from pathlib import Path

import torch

from surgery.hcnr.calibration import Batch
from surgery.hcnr.fisher import FisherSums
from surgery.hcnr.skeleton import ModelSkeleton
from surgery.hcnr.stream import Stream, fisher_streams, forward_streams
from surgery.hcnr.workdir import WorkFolder
from surgery.modelio import locate, open_checkpoint


def skeleton(path: Path, dtype: torch.dtype = torch.float32) -> ModelSkeleton:
    src = locate(str(path))
    return ModelSkeleton(src, open_checkpoint(src), dtype, torch.device("cpu"))


def streamed_fisher(path: Path, batches: list[Batch], work_root: Path, rows: bool = True) -> FisherSums:
    """Fisher sums of one set through the block-by-block forward and backward streams."""
    skel = skeleton(path)
    work = WorkFolder(work_root, {"test": str(path)})
    stream = Stream.capture(skel, work, "sft", "hon", batches)
    forward_streams([stream])
    return fisher_streams([stream], rows=rows)[0]
