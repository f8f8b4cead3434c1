"""Calibration sets: JSONL on disk -> token batches with the loss on response tokens only."""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CalibrationDataError
from ..jsonl import iter_jsonl
from ..prompting import Message, encode_example
from .options import PatchOptions

log = logging.getLogger(__name__)

Prompt = str | tuple[tuple[Any, Any], ...]  # a question, or the (role, content) messages before the answer


#: kinds of D_hon lines that are not questions to decline: their scores count for every decline kind
SHARED_KINDS = frozenset({"answerable"})


def decline_kind(kind: str | None) -> str | None:
    """``kind`` when it names a kind of question to decline; None for no kind or a :data:`SHARED_KINDS` one."""
    return kind if kind is not None and kind not in SHARED_KINDS else None


def is_control(kind: str | None) -> bool:
    """Whether a D_hon line is an answerable control (a :data:`SHARED_KINDS` kind). A line with no kind is not:
    it is neither a decline kind nor a control."""
    return kind in SHARED_KINDS


@dataclass(frozen=True)
class CalibExample:
    prompt: Prompt
    response: str
    kind: str | None = None  # the line's optional "kind" (the bundled honesty set's: unknowable, answerable, ...)


def read_calibration_jsonl(path: str | Path, what: str = "calibration file") -> list[CalibExample]:
    """Parse ``{"prompt","response"}`` or ``{"messages":[...]}`` lines; bad lines name file and line."""
    out = [_example_from_row(row, f"{path}:{no}") for no, row in iter_jsonl(path, what=what)]
    if not out:
        raise CalibrationDataError(f"The {what} {path} has no examples.")
    return out


def _example_from_row(row: dict[str, Any], where: str) -> CalibExample:
    """One line of either accepted format; anything else is one error naming ``where`` (file:line)."""
    if "messages" in row:
        msgs = row["messages"]
        if (
            not isinstance(msgs, list)
            or len(msgs) < 2
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)
        ):
            raise CalibrationDataError(f"{where}: 'messages' must be a list of at least two {{role, content}} objects.")
        if msgs[-1]["role"] != "assistant":
            raise CalibrationDataError(f"{where}: the last message must be the assistant's response.")
        prompt = tuple((m["role"], m["content"]) for m in msgs[:-1])
        return CalibExample(prompt, str(msgs[-1]["content"]), _kind(row))
    if isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
        return CalibExample(row["prompt"], row["response"], _kind(row))
    raise CalibrationDataError(f"{where}: needs string fields 'prompt' and 'response', or 'messages'.")


def _kind(row: dict[str, Any]) -> str | None:
    """The line's "kind" when it is a string (anything else is no kind: the field is optional metadata)."""
    kind = row.get("kind")
    return kind if isinstance(kind, str) and kind else None


def sample_examples(examples: list[CalibExample], max_samples: int, seed: int) -> list[CalibExample]:
    """A seeded subset in file order (all of them when there are few enough)."""
    if len(examples) <= max_samples:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_samples))
    return [examples[i] for i in keep]


def dataset_fingerprint(path: str | Path) -> dict[str, Any]:
    """Name, sha256 and size of a calibration file, so a manifest says exactly which data made the patch."""
    data = Path(path).read_bytes()
    return {"file": Path(path).name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _as_prompt(p: Prompt) -> str | list[Message]:
    """The prompt as :func:`encode_example` takes it (messages back as dicts)."""
    return p if isinstance(p, str) else [{"role": r, "content": c} for r, c in p]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T), right padded
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 on prompt and padding
    kinds: tuple[str | None, ...] = ()  # each example's kind (empty: none known)

    def example_kinds(self) -> tuple[str | None, ...]:
        """Each example's kind, None for every example when none is known."""
        return self.kinds or (None,) * self.input_ids.shape[0]


def tokenize_examples(
    tokenizer: Any, examples: list[CalibExample], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (-100 outside the response) of each example, cut to ``max_length``."""
    out = []
    for ex in examples:
        ids, labels = encode_example(tokenizer, _as_prompt(ex.prompt), ex.response)
        ids, labels = ids[:max_length], labels[:max_length]
        if all(lab == -100 for lab in labels):
            raise CalibrationDataError(
                f"A calibration prompt is longer than --max-length {max_length}, so no response token is left."
            )
        out.append((ids, labels))
    return out


def make_batches(
    encoded: list[tuple[list[int], list[int]]],
    batch_size: int,
    pad_id: int,
    kinds: list[str | None] | None = None,
) -> list[Batch]:
    """Right-padded batches in file order, the loss masked on padding (``kinds``: each example's kind)."""
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
        batches.append(Batch(ids, att, lab, tuple(kinds[i : i + batch_size]) if kinds else ()))
    return batches


@dataclass
class CalibrationSets:
    """D_hon and D_task as token batches: what every later stage of the method reads."""

    hon: list[Batch]
    task: list[Batch]

    def examples(self) -> dict[str, int]:
        """Examples used from each set (for the report)."""
        return {
            "honesty": sum(b.input_ids.shape[0] for b in self.hon),
            "task": sum(b.input_ids.shape[0] for b in self.task),
        }

    def decline_kinds(self) -> dict[str, int]:
        """D_hon's kinds of questions to decline -> how many examples each has (lines with no kind, or of a
        :data:`SHARED_KINDS` kind, are in none)."""
        counts: dict[str, int] = {}
        for b in self.hon:
            for kind in filter(None, map(decline_kind, b.kinds)):
                counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items()))

    def controls(self) -> int:
        """How many of D_hon's examples are answerable controls (:func:`is_control`)."""
        return sum(is_control(k) for b in self.hon for k in b.kinds)

    def for_hessians(self, which: str) -> list[Batch]:
        """The batches ``--hessian-data`` names: hon, task or both."""
        return {"hon": self.hon, "task": self.task, "both": self.hon + self.task}[which]


def load_calibration_sets(
    tokenizer: Any, honesty_data: str | Path, task_data: str | Path, options: PatchOptions
) -> CalibrationSets:
    """Stage 0: read, sample, tokenize and batch both calibration files."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sets = []
    for path, what in ((honesty_data, "honesty calibration file"), (task_data, "task calibration file")):
        every = read_calibration_jsonl(path, what)
        examples = sample_examples(every, options.max_samples, options.seed)
        log.info("%s %s: using %d of its %d examples (seed %d)", what, path, len(examples), len(every), options.seed)
        encoded = tokenize_examples(tokenizer, examples, options.max_length)
        sets.append(make_batches(encoded, options.batch_size, pad, [ex.kind for ex in examples]))
    return CalibrationSets(*sets)
