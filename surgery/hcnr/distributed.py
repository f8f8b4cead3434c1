"""Several processes (GPUs) on one patch, with plain ``torch.distributed`` under ``torchrun``.

``torchrun --nproc-per-node N -m surgery.cli patch ...`` starts N copies of the command; each reads
``RANK``/``WORLD_SIZE`` from the environment torchrun sets. The calibration batches are split across
ranks; the Fisher sums are all-reduced, so every rank selects the same neurons; each selected block's
Hessian sums are reduced to one owner rank (blocks are dealt round-robin), which solves that block and
writes its part; rank 0 assembles the patch. Ranks share the work folder, so all must run on one
machine (``--nproc-per-node``). One process is the same code with a world of size 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import SurgeryError
from .fisher import FisherSums

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (size 1: no ``torch.distributed`` at all)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> World:
        """The world torchrun describes in the environment; starts its process group on first use."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend)
        log.info("rank %d of %d (%s)", dist.get_rank(), size, dist.get_backend())
        return cls(dist.get_rank(), size)

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes the patch, its report and the command line."""
        return self.rank == 0

    def shard(self, items: list[T], what: str) -> list[T]:
        """This rank's contiguous share of ``items`` (the same split on every run of this world size)."""
        if self.size == 1:
            return items
        if len(items) < self.size:
            raise SurgeryError(
                f"{len(items)} {what} cannot be split over {self.size} processes; "
                "use fewer processes or a smaller --batch-size."
            )
        per, extra = divmod(len(items), self.size)
        start = self.rank * per + min(self.rank, extra)
        return items[start : start + per + (1 if self.rank < extra else 0)]

    def owner(self, block_index: int) -> int:
        """The rank that solves and writes ``block_index``'s part."""
        return block_index % self.size

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over every rank, on every rank (in place; returned for convenience)."""
        if self.size > 1:
            with _on_backend_device(t) as x:
                dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return t

    def sum_to(self, t: torch.Tensor, owner: int) -> torch.Tensor:
        """``t`` summed over every rank into ``owner``'s copy (others keep a partial sum)."""
        if self.size > 1:
            with _on_backend_device(t) as x:
                dist.reduce(x, dst=owner, op=dist.ReduceOp.SUM)
        return t

    def sum_fisher(self, sums: FisherSums) -> FisherSums:
        """Fisher sums over every rank's examples (each rank summed its own share)."""
        for vec in [*sums.columns.values(), *sums.rows.values()]:
            self.sum(vec)
        for group in sorted(sums.by_kind):  # every rank holds every group (zeros where its shard has none)
            for key in sorted(sums.by_kind[group]):
                self.sum(sums.by_kind[group][key])
        count = self.sum(torch.tensor([sums.n_examples], dtype=torch.int64))
        sums.n_examples = int(count[0])
        return sums

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


@contextlib.contextmanager
def _on_backend_device(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """NCCL reduces GPU tensors only: a host tensor goes over and its result comes back into ``t``."""
    if dist.get_backend() != "nccl" or t.is_cuda:
        yield t
        return
    x = t.to(f"cuda:{torch.cuda.current_device()}")
    yield x
    t.copy_(x.cpu())
