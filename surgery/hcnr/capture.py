"""What each block is called with, recorded once, so blocks can then be run one at a time.

A decoder block is not a function of its hidden states alone: the model hands it masks, rotary
position values, and in Gemma-3 a sliding or a global mask depending on the block. Rather than
rebuilding these per family, the model's own forward is run with every block replaced by a
pass-through that records its arguments; the hidden states are the only thing that flows from one
block to the next, and that is checked (a model that changes them between blocks is refused).

The same pass-through trick gives the loss from the last hidden state (:func:`head_losses`): the
model's forward runs with the blocks skipped and the cached last hidden state injected, so the final
norm, ``lm_head`` and any logit soft-capping are the model's own.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import SurgeryError
from .calibration import Batch
from .fisher import per_example_losses, target_losses
from .skeleton import ModelSkeleton


class _StopForward(Exception):
    """Raised by the last pass-through: nothing after the blocks is needed while capturing."""


@dataclass
class BlockCall:
    """How the model calls one block for one batch: its arguments, minus the hidden states."""

    args: tuple[Any, ...]  # positional arguments after the hidden states
    kwargs: dict[str, Any]
    hidden_kw: bool  # hidden states passed as ``hidden_states=`` rather than first positional

    def call(self, module: nn.Module, hidden: torch.Tensor) -> Any:
        """The block's own return value for input ``hidden`` (a tensor or a tuple, by model family)."""
        if self.hidden_kw:
            return module(*self.args, hidden_states=hidden, **self.kwargs)
        return module(hidden, *self.args, **self.kwargs)

    def run(self, module: nn.Module, hidden: torch.Tensor, returns_tuple: bool) -> torch.Tensor:
        """The block's output hidden states for input ``hidden``."""
        out = self.call(module, hidden)
        return out[0] if returns_tuple else out


@dataclass
class BatchCalls:
    """One calibration batch: the first block's input and every block's call."""

    hidden: torch.Tensor  # input of block 0 (embeddings), (B, T, H)
    calls: list[BlockCall]  # one per block, in order


def _split_hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, BlockCall]:
    if args:
        return args[0], BlockCall(tuple(args[1:]), dict(kwargs), False)
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), BlockCall((), kwargs, True)


@contextlib.contextmanager
def _replaced_forwards(modules: list[nn.Module], forwards: list[Callable[..., Any]]) -> Iterator[None]:
    """Every block's ``forward`` replaced for the duration (an instance attribute; class left alone)."""
    for m, f in zip(modules, forwards):
        m.forward = f
    try:
        yield
    finally:
        for m in modules:
            del m.forward


def _model_inputs(batch: Batch, device: torch.device) -> dict[str, Any]:
    return {
        "input_ids": batch.input_ids.to(device),
        "attention_mask": batch.attention_mask.to(device),
        "use_cache": False,
    }


def capture_batch(skel: ModelSkeleton, batch: Batch, returns_tuple: bool | None) -> BatchCalls:
    """Run the model's forward with pass-through blocks and record what each block is given.

    ``returns_tuple=None`` (not known yet) records the first block's call only.
    """
    calls: list[BlockCall] = []
    first: list[torch.Tensor] = []
    last_out: list[torch.Tensor] = []
    n = len(skel.blocks) if returns_tuple is not None else 1

    def make(i: int) -> Callable[..., Any]:
        def passthrough(*args: Any, **kwargs: Any) -> Any:
            hidden, call = _split_hidden(args, kwargs)
            if len(calls) != i:
                raise SurgeryError("This model calls its blocks out of order; it cannot be streamed block by block.")
            if i == 0:
                first.append(hidden)
            elif hidden is not last_out[0]:
                raise SurgeryError(
                    "This model changes the hidden states between its blocks; it cannot be streamed block by block."
                )
            calls.append(call)
            last_out[:] = [hidden]
            if i == n - 1:
                raise _StopForward
            return (hidden,) if returns_tuple else hidden

        return passthrough

    modules = [skel.block_module(b) for b in skel.blocks[:n]]
    with _replaced_forwards(modules, [make(i) for i in range(n)]), torch.no_grad():
        try:
            skel.model(**_model_inputs(batch, skel.device))
        except _StopForward:
            pass
    if len(calls) != n:
        raise SurgeryError(f"The model called {len(calls)} of its {n} blocks; it cannot be streamed block by block.")
    return BatchCalls(first[0].detach(), calls)


def block_returns_tuple(skel: ModelSkeleton, batch: Batch) -> bool:
    """Whether the model's blocks return ``(hidden, ...)`` rather than the hidden states themselves.

    Learnt by running the first block once on the first batch: model code either uses the block's
    result directly or takes its element 0, and the pass-throughs must answer in the same form.
    """
    first = capture_batch(skel, batch, None)
    call = first.calls[0]
    with skel.block(skel.blocks[0]) as module, torch.no_grad():
        out = call.call(module, first.hidden)
    if isinstance(out, torch.Tensor):
        return False
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return True
    raise SurgeryError("This model's blocks return neither a tensor nor a tuple; it cannot be streamed.")


def response_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose logits the loss reads: t where some example has a response token at t + 1."""
    return torch.nonzero((labels[:, 1:] != -100).any(0)).flatten()


def head_losses(skel: ModelSkeleton, batch: Batch, last_hidden: torch.Tensor, returns_tuple: bool) -> torch.Tensor:
    """Per-example losses from the last block's output, through the model's own norm, head and soft-capping.

    Only the positions the loss reads are projected onto the vocabulary (``logits_to_keep``) when the
    model accepts it: the projection is the largest matrix of a small model, and most positions are prompt.
    """
    n = len(skel.blocks)

    def make(i: int) -> Callable[..., Any]:
        def passthrough(*args: Any, **kwargs: Any) -> Any:
            hidden = last_hidden if i == 0 else _split_hidden(args, kwargs)[0]
            return (hidden,) if returns_tuple else hidden

        return passthrough

    inputs = _model_inputs(batch, skel.device)
    labels = batch.labels.to(skel.device)
    keep = response_positions(labels) if _accepts_logits_to_keep(skel.model) else None
    if keep is not None:
        inputs["logits_to_keep"] = keep
    modules = [skel.block_module(b) for b in skel.blocks]
    with _replaced_forwards(modules, [make(i) for i in range(n)]):
        logits = skel.model(**inputs).logits
    if keep is None:
        return per_example_losses(logits, labels)
    return target_losses(logits, labels[:, keep + 1])  # the kept positions t predict t + 1


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters
