"""A model without its weights: the shape of the network, with blocks loaded one at a time from disk.

Streaming is what lets an 8B or 70B model be patched in the memory of one block. The skeleton is
built with every parameter on the ``meta`` device (buffers such as rotary frequencies stay real, they
are computed from the config); the parameters outside the numbered blocks (embeddings, final norm,
``lm_head``) are loaded once, and :meth:`ModelSkeleton.block` loads one block's weights from the
checkpoint, in the compute dtype on the compute device, and puts them back on ``meta`` afterwards.
Nothing is hard-coded per family: blocks are the numbered modules that hold the linear layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from accelerate import init_empty_weights
from torch import nn

from ..errors import ModelFolderError, SurgeryError
from ..linear_layers import LinearLayer, find_linear_layers
from ..memory import release_freed_memory
from ..modelio import LazyCheckpoint, ModelSource, StateDictCheckpoint

Checkpoint = LazyCheckpoint | StateDictCheckpoint


@dataclass(frozen=True)
class Block:
    """One numbered block: its module path and the linear layers HCNR may touch inside it."""

    index: int
    name: str  # e.g. model.layers.3
    layers: tuple[LinearLayer, ...]


def build_skeleton(source: ModelSource, trust_remote_code: bool = False) -> nn.Module:
    """The causal LM of ``source``'s config with every parameter on ``meta`` (no weight is read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(source.config_dir), trust_remote_code=trust_remote_code)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFolderError(f"Could not build a causal LM from {source.config_dir}: {first}") from None
    model.eval()
    return model


def find_blocks(model: nn.Module) -> list[Block]:
    """The numbered blocks in module order, each with its linear layers; none means nothing to patch."""
    layers = find_linear_layers(model)
    by_block: dict[str, list[LinearLayer]] = {}
    for layer in layers:
        by_block.setdefault(layer.block, []).append(layer)
    return [Block(i, name, tuple(members)) for i, (name, members) in enumerate(by_block.items())]


class ModelSkeleton:
    """One model streamed from its checkpoint: the skeleton, its blocks, and loading them one at a time."""

    def __init__(
        self,
        source: ModelSource,
        checkpoint: Checkpoint,
        dtype: torch.dtype,
        device: torch.device,
        trust_remote_code: bool = False,
    ) -> None:
        self.source, self.checkpoint, self.dtype, self.device = source, checkpoint, dtype, device
        self.model = build_skeleton(source, trust_remote_code)
        self.blocks = find_blocks(self.model)
        if not self.blocks:
            raise SurgeryError(f"No linear layers inside numbered blocks were found in {source.spec}.")
        self.modules = dict(self.model.named_modules())
        self._prepared = False

    def prepare(self) -> None:
        """Load the weights outside the blocks (once): needed to run the model, not to plan a run."""
        if not self._prepared:
            self._load_outside_blocks()
            self._prepared = True

    @property
    def layers(self) -> list[LinearLayer]:
        """Every linear layer HCNR may touch, in model order."""
        return [layer for block in self.blocks for layer in block.layers]

    def block_module(self, block: Block) -> nn.Module:
        return self.modules[block.name]

    def _load_outside_blocks(self) -> None:
        """Embeddings, final norm, ``lm_head`` and any other weight outside the blocks, kept for the run."""
        prefixes = tuple(b.name + "." for b in self.blocks)
        names = [n for n, _ in self.model.named_parameters(remove_duplicate=False) if not n.startswith(prefixes)]
        missing = [n for n in names if self._key(n) is None]
        _set_params(self.model, {n: self._read(n) for n in names if n not in missing})
        if missing:
            self.model.tie_weights()  # type: ignore[operator]  # lm_head shares the embedding matrix and is not stored
            still = [n for n in missing if _param(self.model, n).device.type == "meta"]
            if still:
                raise ModelFolderError(f"{self.source.spec} has no tensor '{still[0]}' (needed by its config).")
        for mod in self.model.modules():  # buffers (rotary frequencies, ...) follow; block weights stay on meta
            for k, buf in mod._buffers.items():
                if buf is not None and buf.device != self.device:
                    mod._buffers[k] = buf.to(self.device)

    def _key(self, name: str) -> str | None:
        """The checkpoint key of a parameter (some checkpoints omit the base model's prefix)."""
        if name in self.checkpoint:
            return name
        short = name.split(".", 1)[-1]
        return short if short in self.checkpoint else None

    def _read(self, name: str) -> torch.Tensor:
        key = self._key(name)
        if key is None:
            raise ModelFolderError(f"{self.source.spec} has no tensor '{name}' (needed by its config).")
        t = self.checkpoint.get(key)
        expected = tuple(_param(self.model, name).shape)
        if tuple(t.shape) != expected:
            raise ModelFolderError(
                f"Tensor '{key}' of {self.source.spec} has shape {tuple(t.shape)}, its config says {expected}."
            )
        return t.to(device=self.device, dtype=self.dtype if t.is_floating_point() else t.dtype)

    @contextlib.contextmanager
    def block(self, block: Block, backward: bool = False) -> Iterator[nn.Module]:
        """``block``'s module with its weights loaded; they are dropped (back to meta) on exit.

        Whatever runs the block inside runs under :func:`attention_kernels` for this device and dtype and
        whether it is backpropagated through (``backward``; also for a pass that must give the same bits as
        one that is)."""
        module = self.block_module(block)
        names = [n for n, _ in module.named_parameters()]
        _set_params(module, {n: self._read(f"{block.name}.{n}") for n in names})
        try:
            with attention_kernels(self.device, self.dtype, backward):
                yield module
        finally:
            _set_params(module, {n: torch.empty(_param(module, n).shape, device="meta") for n in names})
            release_freed_memory()


def attention_kernels(
    device: torch.device, dtype: torch.dtype, backward: bool = True
) -> contextlib.AbstractContextManager[object]:
    """The scaled-dot-product attention kernels a block runs with: torch's choice, except bfloat16 on a CPU
    when the block is backpropagated through.

    There torch picks its flash-attention kernel, whose bf16 backward is 2-4x slower than its float32 one
    (measured on a Xeon with AMX, SmolLM2's 9 heads x 64, 70-90 tokens: it made the bf16 Fisher pass barely
    faster than float32); the plain math kernel runs the two attention matmuls on the bf16 units instead.
    Forward-only passes keep flash: its bf16 forward is 5x faster than the math kernel's (0.9 against 4.8 ms
    for 8 x 9 heads x 64 tokens x 64 on one thread). float32 and GPUs keep torch's choice, so their results
    do not change."""
    if device.type != "cpu" or dtype != torch.bfloat16 or not backward:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _param(module: nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, leaf)


def _set_params(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Replace parameters by frozen ones holding ``tensors`` (the method never trains the model)."""
    for name, t in tensors.items():
        owner, _, leaf = name.rpartition(".")
        sub = module.get_submodule(owner) if owner else module
        sub._parameters[leaf] = nn.Parameter(t, requires_grad=False)
