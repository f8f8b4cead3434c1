"""File size, load time and greedy-decoding speed of PyTorch fp32 vs onnxruntime fp32 vs int8.

An export is only worth deploying if it is smaller or faster than the model it came from; this
measures both on the same prompts and thread count. Each back-end decodes every prompt greedily,
batch 1, exactly ``tokens`` new tokens (EOS suppressed), after one warm-up generation. Throughput is
generated tokens / wall time (prefill of the short prompt included); each prompt is timed ``repeat``
times and the fastest run is kept, which filters out the noise of a shared machine.
``python -m benchmarks.export_speed`` prints what :func:`export_speed` measures.

onnxruntime is loaded only inside :func:`surgery.export.onnx.load_ort_model`, so this module imports
without the ``[onnx]`` extra.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SurgeryError
from ..modelio import load_model, load_tokenizer, locate, safetensors_files
from ..prompting import encode_prompt
from .onnx import load_ort_model, weights_size_bytes

#: the chat prompts every back-end decodes: a known fact, an unknowable future, a completion
PROMPTS = (
    "What is the capital of France?",
    "What will the price of gold be on 3 March 2031?",
    "Complete the sentence: The official language of Brazil is",
)


@dataclass(frozen=True)
class DecodeSpeed:
    """Tokens generated over all prompts, their (best-of-repeat) seconds, and the rate (rounded)."""

    tokens: int
    seconds: float
    tokens_per_second: float


@dataclass(frozen=True)
class BackendSpeed:
    """One row of the table: a back-end, its folder, weight bytes, load seconds and decode speed.

    Numbers are rounded as they are reported (load 2 decimals, seconds 3, tokens/s 2), so the row is
    the record itself.
    """

    backend: str
    folder: str
    bytes: int
    load_seconds: float
    tokens: int
    seconds: float
    tokens_per_second: float


def _timed_generate(model: Any, x: torch.Tensor, n: int, pad_id: int) -> float:
    """Seconds for one greedy generation of exactly ``n`` new tokens from the prompt ``x``."""
    t0 = time.perf_counter()
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=pad_id,
    )
    dt = time.perf_counter() - t0
    if out.shape[1] - x.shape[1] != n:
        raise SurgeryError(f"expected {n} new tokens, the model generated {out.shape[1] - x.shape[1]}")
    return dt


@torch.no_grad()
def decode_speed(model: Any, ids: Sequence[list[int]], n_tokens: int, pad_id: int, repeat: int) -> DecodeSpeed:
    """Greedy tokens/s of an HF-style ``model.generate`` over ``ids``, best of ``repeat`` per prompt.

    One short warm-up generation comes first: allocations and onnxruntime's first-run graph work are
    not part of the timing.
    """
    _timed_generate(model, torch.tensor([ids[0]]), 8, pad_id)
    best = [min(_timed_generate(model, torch.tensor([p]), n_tokens, pad_id) for _ in range(repeat)) for p in ids]
    total = sum(best)
    return DecodeSpeed(
        tokens=n_tokens * len(ids),
        seconds=round(total, 3),
        tokens_per_second=round(n_tokens * len(ids) / total, 2),
    )


def _row(backend: str, folder: Path, size: int, load_s: float, speed: DecodeSpeed) -> BackendSpeed:
    """The table row of one back-end (load seconds rounded as reported)."""
    s = speed
    return BackendSpeed(backend, str(folder), size, round(load_s, 2), s.tokens, s.seconds, s.tokens_per_second)


def export_speed(
    model: str,
    exports: Sequence[tuple[str, Path | None]],
    *,
    tokens: int = 64,
    repeat: int = 3,
    threads: int = 1,
    prompts: Sequence[str] = PROMPTS,
) -> list[BackendSpeed]:
    """One row for the PyTorch fp32 ``model``, then one per ``(label, folder)`` export (None skipped).

    ``threads`` is onnxruntime's thread count; the caller sets torch's (a process-wide setting) to the
    same number. Each model is released before the next loads, so they never share memory.
    """
    source = locate(model)
    tok = load_tokenizer(source)
    ids = [encode_prompt(tok, p) for p in prompts]
    pad = tok.pad_token_id
    t0 = time.perf_counter()
    lm = load_model(source, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in safetensors_files(source.path))
    rows = [_row("PyTorch fp32", source.path, size, load_s, decode_speed(lm, ids, tokens, pad, repeat))]
    del lm
    for label, folder in exports:
        if folder is None:
            continue
        t0 = time.perf_counter()
        ort = load_ort_model(folder, threads=threads)
        load_s = time.perf_counter() - t0
        speed = decode_speed(ort, ids, tokens, pad, repeat)
        rows.append(_row(label, folder, weights_size_bytes(folder), load_s, speed))
        del ort
    return rows
