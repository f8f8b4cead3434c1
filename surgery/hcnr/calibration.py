"""Calibration sets: JSONL on disk -> token batches with the loss on response tokens only."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SurgeryError
from ..prompting import encode_example


@dataclass(frozen=True)
class CalibExample:
    prompt: str | tuple  # a question, or a tuple of messages before the answer
    response: str


def read_calibration_jsonl(path: str | Path) -> list[CalibExample]:
    """Parse ``{"prompt","response"}`` or ``{"messages":[...]}`` lines; bad lines name file and line."""
    path = Path(path)
    if not path.is_file():
        raise SurgeryError(f"Calibration file {path} does not exist.")
    out: list[CalibExample] = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SurgeryError(f"{path}:{no}: not valid JSON ({exc.msg}).") from None
            out.append(_example_from_row(row, path, no))
    if not out:
        raise SurgeryError(f"Calibration file {path} has no examples.")
    return out


def _example_from_row(row, path: Path, no: int) -> CalibExample:
    where = f"{path}:{no}"
    if not isinstance(row, dict):
        raise SurgeryError(f"{where}: expected a JSON object with prompt/response or messages.")
    if "messages" in row:
        msgs = row["messages"]
        if (not isinstance(msgs, list) or len(msgs) < 2
                or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)):
            raise SurgeryError(f"{where}: 'messages' must be a list of at least two {{role, content}} objects.")
        if msgs[-1]["role"] != "assistant":
            raise SurgeryError(f"{where}: the last message must be the assistant's response.")
        prompt = tuple((m["role"], m["content"]) for m in msgs[:-1])
        return CalibExample(prompt, str(msgs[-1]["content"]))
    if isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
        return CalibExample(row["prompt"], row["response"])
    raise SurgeryError(f"{where}: needs string fields 'prompt' and 'response', or 'messages'.")


def sample_examples(examples: list[CalibExample], max_samples: int, seed: int) -> list[CalibExample]:
    """A seeded subset in file order (all of them when there are few enough)."""
    if len(examples) <= max_samples:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_samples))
    return [examples[i] for i in keep]


def dataset_fingerprint(path: str | Path) -> dict:
    data = Path(path).read_bytes()
    return {"file": Path(path).name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _as_prompt(p: str | tuple):
    return p if isinstance(p, str) else [{"role": r, "content": c} for r, c in p]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T), right padded
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 on prompt and padding


def tokenize_examples(tokenizer, examples: list[CalibExample], max_length: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for ex in examples:
        ids, labels = encode_example(tokenizer, _as_prompt(ex.prompt), ex.response)
        ids, labels = ids[:max_length], labels[:max_length]
        if all(l == -100 for l in labels):
            raise SurgeryError(
                f"A calibration prompt is longer than --max-length {max_length}, so no response token is left."
            )
        out.append((ids, labels))
    return out


def make_batches(encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> list[Batch]:
    batches = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        T = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        att = torch.zeros((len(chunk), T), dtype=torch.long)
        lab = torch.full((len(chunk), T), -100, dtype=torch.long)
        for j, (x, y) in enumerate(chunk):
            ids[j, : len(x)] = torch.tensor(x)
            att[j, : len(x)] = 1
            lab[j, : len(y)] = torch.tensor(y)
        batches.append(Batch(ids, att, lab))
    return batches
