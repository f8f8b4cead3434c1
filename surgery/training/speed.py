"""How long one LoRA training step takes with the plain causal-LM loss and with the response-only loss.

Both give the same loss value; the response-only loss applies the output head to labelled positions
only, which matters for large vocabularies (Gemma 3: 262k). ``python -m benchmarks.train_step`` prints
what :func:`loss_step_timings` measures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .lora import collate, default_target_modules, encode_examples, pad_token_id, response_only_loss


@dataclass(frozen=True)
class StepTiming:
    """One loss variant: its value on the batch and the median seconds of a forward+backward step."""

    name: str
    loss: float
    seconds: float


@dataclass(frozen=True)
class LossStepTimings:
    """The batch that was timed (tokens, labelled tokens, vocabulary) and one row per loss variant."""

    vocabulary: int
    tokens: int
    labelled: int
    rows: list[StepTiming]


def _median_step(fn: Callable[[], torch.Tensor], model, repeats: int) -> tuple[float, float]:
    """(last loss, median seconds) of ``repeats`` forward+backward steps after one warm-up step."""
    times, loss = [], None
    for i in range(repeats + 1):
        t = time.perf_counter()
        loss = fn()
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    return loss.item(), statistics.median(times)


def loss_step_timings(
    model, tokenizer, examples: Sequence[tuple[str, str]], *, repeats: int = 3, max_length: int = 96
) -> LossStepTimings:
    """Wrap ``model`` in a LoRA adapter (r=16, alpha 32) and time one step of each loss on ``examples``."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=default_target_modules(model))
    )
    batch = collate(encode_examples(tokenizer, examples, max_length), pad_token_id(tokenizer))
    variants = (
        ("plain (model(**batch).loss)", lambda: pm(**batch).loss),
        ("response-only logits", lambda: response_only_loss(pm, batch)),
    )
    rows = [StepTiming(name, *_median_step(fn, pm, repeats)) for name, fn in variants]
    return LossStepTimings(
        vocabulary=model.get_output_embeddings().weight.shape[0],
        tokens=int(batch["attention_mask"].sum()),
        labelled=int((batch["labels"][:, 1:] != -100).sum()),
        rows=rows,
    )
