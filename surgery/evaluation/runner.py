"""The model seam: anything that turns prompts into greedy completions.

Metrics never see a model, only a :class:`Generator`. :class:`HFGenerator` drives any object with
an HF-style ``.generate`` (a transformers model, or optimum's ``ORTModelForCausalLM``), batched with
left padding. Back-ends are named: "torch" is built in; others are registered explicitly with
:func:`register_backend` ("onnx" by :func:`surgery.export.ort_backend.register`, called by the
commands that offer it), so this module never depends on onnxruntime or on the export package.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ..errors import SurgeryError
from ..modelio import load_model, load_tokenizer, locate
from ..progress import progress
from ..prompting import Message, prompt_text

log = logging.getLogger(__name__)

Prompt = str | Sequence[Message]


class Generator(Protocol):
    """Greedy completions for questions or message lists, in input order."""

    name: str

    def generate(self, prompts: list[Prompt], max_new_tokens: int) -> list[str]: ...


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end an answer: the tokenizer's EOS and the generation config's EOS list."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    return ids


class HFGenerator:
    """Batched greedy decoding with left padding over an HF-style ``generate``.

    Prompts are sorted by token length before batching so that a batch carries little padding;
    results come back in input order. Left padding plus the attention mask (HF derives position ids
    from it) makes each row's greedy output the same as decoding it alone.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, name: str = "torch") -> None:
        if batch_size < 1:
            raise SurgeryError(f"--batch-size must be at least 1 (got {batch_size}).")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise SurgeryError("The tokenizer has neither a pad nor an EOS token, so batches cannot be padded.")
        self.stop_ids = stop_token_ids(model, tokenizer)

    def encode(self, prompt: Prompt) -> list[int]:
        return self.tokenizer(prompt_text(self.tokenizer, prompt), add_special_tokens=False)["input_ids"]

    def decode(self, new_tokens: Sequence[int]) -> str:
        """The answer text: everything before the first stop token, special tokens dropped."""
        out = []
        for t in new_tokens:
            if int(t) in self.stop_ids:
                break
            out.append(int(t))
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()

    def _generate_batch(self, batch: list[list[int]], max_new_tokens: int) -> list[str]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        device = getattr(self.model, "device", None)
        if isinstance(device, torch.device) and device.type != "cpu":  # CUDA/MPS: the batch goes where the model is
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
        return [self.decode(row[width:].tolist()) for row in out]

    def generate(self, prompts: list[Prompt], max_new_tokens: int) -> list[str]:
        encoded = [self.encode(p) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
        results: list[str] = [""] * len(encoded)
        starts = range(0, len(order), self.batch_size)
        for start in progress(starts, desc=f"generate ({self.name})", total=len(starts), unit="batch"):
            idx = order[start : start + self.batch_size]
            for i, text in zip(idx, self._generate_batch([encoded[i] for i in idx], max_new_tokens), strict=True):
                results[i] = text
        return results


GeneratorFactory = Callable[..., Generator]
_BACKENDS: dict[str, GeneratorFactory] = {}


def register_backend(name: str, factory: GeneratorFactory) -> None:
    """Make ``make_generator(name, model, **kw)`` call ``factory(model, **kw)``."""
    _BACKENDS[name] = factory


def torch_generator(
    model: str,
    *,
    batch_size: int = 16,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = torch.float32,
    allow_pickle: bool = False,
    device: torch.device | str = "cpu",
) -> HFGenerator:
    """A transformers model (folder, cached hub id or PEFT adapter); float32 on the CPU by default.

    ``dtype``/``device`` come from :func:`surgery.devices.resolve` in the commands (``--dtype``, ``--device``).
    """
    source = locate(model)
    lm = load_model(source, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if torch.device(device).type != "cpu":
        lm = lm.to(device)
    tok = load_tokenizer(source, trust_remote_code=trust_remote_code)
    return HFGenerator(lm, tok, batch_size=batch_size, name="torch")


register_backend("torch", torch_generator)


def make_generator(backend: str, model: str, **kw: Any) -> Generator:
    """The generator for ``model`` on the named back-end ("torch", or one registered with :func:`register_backend`)."""
    if backend not in _BACKENDS:
        raise SurgeryError(
            f"Unknown back-end '{backend}'; registered back-ends: {', '.join(sorted(_BACKENDS))} (a plug-in such as "
            "'onnx' is available once its register() has run, e.g. surgery.export.ort_backend.register())."
        )
    return _BACKENDS[backend](model, **kw)
