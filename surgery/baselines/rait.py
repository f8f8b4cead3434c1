"""RAIT (refusal-aware instruction tuning): re-tune the SFT model on IDK-relabelled data.

The relabelling follows the pair recipe (R-Tuning style): answerable questions the model itself
answers correctly keep their gold answer (PKQA, popular knowledge, fills the answerable half), and
unanswerable questions (SelfAware-unanswerable, PUQA) get the fixed "I don't know" answer. Every
question comes from the "train" split and the "fit" purpose, so RAIT never sees an evaluation item
nor a calibration item of the patch.

Budgets: a number of examples (a prefix of one fixed, balanced order, so a small budget is nested in
a larger one; budgets beyond the pool repeat it) and/or a wall-clock budget in seconds (training stops
after the step that crosses it). LoRA goes through :func:`surgery.training.lora.train_lora`; the full
fine-tune uses the same encoding, batching, optimiser and schedule on every weight.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..devices import Placement
from ..errors import CalibrationDataError, SurgeryError
from ..hcnr import calibration_sets as C
from ..jsonl import iter_jsonl
from ..modelio import load_model, load_tokenizer, locate, write_safetensors_folder
from ..training.lora import (
    ADAPTER_WEIGHTS,
    as_pairs,
    encode_examples,
    pad_token_id,
    save_adapter,
    train_lora,
    train_steps,
)
from .options import TrainOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RaitOptions(TrainOptions):
    """How RAIT trains; ``examples``/``seconds`` are the budgets (either or both)."""

    METHOD: ClassVar[str] = "RAIT"
    UNIT: ClassVar[str] = "example"
    DEFAULT_LR: ClassVar[dict[str, float]] = {"lora": 5e-4, "full": 1e-5}


def interleave(first: Sequence, second: Sequence) -> list:
    """a0, b0, a1, b1, ... then the rest of the longer list: every even-length prefix is balanced."""
    out = []
    for a, b in zip(first, second):
        out += [a, b]
    k = min(len(first), len(second))
    return out + list(first[k:]) + list(second[k:])


def relabelled_pool(
    generator, *, data_dir=None, probe: int = 400, seed: int = 0, max_new_tokens: int = 32
) -> list[C.Example]:
    """IDK-relabelled training questions in a fixed, balanced order (answer, IDK, answer, IDK, ...).

    ``generator`` is the model being re-tuned: its correct answers on ``probe`` SelfAware-answerable
    questions decide what it "knows". With ``generator=None`` nothing is probed and PKQA alone is the
    answerable half.
    """
    known: list = []
    if generator is not None and probe > 0:
        known = C.probe_known(
            generator,
            C.known_candidates(data_dir=data_dir, purpose="fit", n=probe, seed=seed),
            max_new_tokens=max_new_tokens,
        )
    rng = random.Random(seed)
    pkqa = list(C.train_pool("pkqa", "fit", data_dir=data_dir))
    rng.shuffle(pkqa)
    answerable = [C.answer_example(it) for it in list(known) + pkqa]
    unknown_items = list(C.train_pool("selfaware", "fit", data_dir=data_dir, answerable=False)) + list(
        C.train_pool("puqa", "fit", data_dir=data_dir)
    )
    rng.shuffle(unknown_items)
    unknown = [C.idk_example(it) for it in unknown_items]
    if not answerable or not unknown:
        raise SurgeryError("The data folder has no train-split questions to relabel for RAIT.")
    log.info("RAIT pool: %d answerable (%d probed known), %d unknown", len(answerable), len(known), len(unknown))
    return interleave(answerable, unknown)


def budget_examples(pool: Sequence[C.Example], n: int) -> list[C.Example]:
    """The first ``n`` examples of ``pool``; past its end the pool is repeated (and the log says so)."""
    if not pool:
        raise SurgeryError("The RAIT training pool is empty.")
    if n > len(pool):
        log.warning(
            "RAIT budget %d exceeds the %d unique examples: the pool is repeated %.1f times",
            n,
            len(pool),
            n / len(pool),
        )
    reps = -(-n // len(pool))
    return (list(pool) * reps)[:n]


def read_examples(path: str | Path) -> list[C.Example]:
    """A prompt/response JSONL (``{"prompt", "response"}`` a line) as training examples."""
    path = Path(path)
    out = []
    for n, row in iter_jsonl(path, what="training data", error=CalibrationDataError):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise CalibrationDataError(f'Line {n} of {path} needs "prompt" and "response" strings.')
        out.append({"id": str(row.get("id", f"{path.stem}:{n}")), "prompt": row["prompt"], "response": row["response"]})
    if not out:
        raise CalibrationDataError(f"Training data {path} has no examples.")
    return out


def examples_seen(n_data: int, steps: int, batch_size: int) -> int:
    """Training examples actually consumed by ``steps`` one-pass steps over ``n_data`` examples."""
    per_epoch = -(-n_data // batch_size)
    full, part = divmod(steps, per_epoch)
    return full * n_data + min(n_data, part * batch_size)


def train_full(
    model,
    tokenizer,
    examples: Sequence[tuple],
    *,
    lr: float = 1e-5,
    batch_size: int = 8,
    max_length: int = 96,
    seed: int = 0,
    max_seconds: float | None = None,
    placement: Placement | None = None,
):
    """Full fine-tune (every weight) with train_lora's recipe: response-only loss, AdamW, linear decay."""
    data = encode_examples(tokenizer, examples, max_length)
    if not data:
        raise SurgeryError("No RAIT example fits in the token budget.")
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    losses = train_steps(
        model,
        data,
        params,
        pad_id=pad_token_id(tokenizer),
        lr=lr,
        epochs=1,
        batch_size=batch_size,
        seed=seed,
        max_seconds=max_seconds,
        desc=f"full fine-tune ({len(data)} ex.)",
        placement=placement,
    )
    model.eval()
    model.training_losses = losses
    return model


def train_rait(
    model,
    tokenizer,
    examples: Sequence[C.Example],
    options: RaitOptions,
    adapter_dir: Path | None = None,
    placement: Placement | None = None,
):
    """Re-tune ``model`` on ``examples``; returns (plain merged model, info dict).

    With LoRA and ``adapter_dir`` the adapter is also saved there (float16) before it is merged.
    ``placement``: the model's device and the training precision (:func:`surgery.training.lora.train_steps`).
    """
    pairs = as_pairs(examples)
    t0 = time.perf_counter()
    if options.mode == "lora":
        peft_model = train_lora(
            model,
            tokenizer,
            pairs,
            r=options.r,
            alpha=options.alpha,
            lr=options.learning_rate,
            epochs=1,
            batch_size=options.batch_size,
            max_length=options.max_length,
            seed=options.seed,
            max_seconds=options.seconds,
            placement=placement,
        )
        losses = peft_model.training_losses
        adapter_params = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        train_seconds = time.perf_counter() - t0
        adapter_bytes = None
        if adapter_dir is not None:
            adapter_bytes = (save_adapter(peft_model, Path(adapter_dir)) / ADAPTER_WEIGHTS).stat().st_size
        merged = peft_model.merge_and_unload()
    else:
        merged = train_full(
            model,
            tokenizer,
            pairs,
            lr=options.learning_rate,
            batch_size=options.batch_size,
            max_length=options.max_length,
            seed=options.seed,
            max_seconds=options.seconds,
            placement=placement,
        )
        losses, adapter_params, adapter_bytes = merged.training_losses, None, None
        train_seconds = time.perf_counter() - t0
    n_data = len(encode_examples(tokenizer, pairs, options.max_length))
    info = {
        "steps": len(losses),
        "examples_used": examples_seen(n_data, len(losses), options.batch_size),
        "examples_offered": len(examples),
        "train_seconds": round(train_seconds, 3),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "adapter_parameters": adapter_params,
        "adapter_bytes": adapter_bytes,
        "options": options.to_dict(),
        "precision": placement.record() if placement is not None else {"device": "cpu", "dtype": "float32"},
    }
    return merged, info


def model_tensors(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The state dict with tied copies dropped (the checkpoint stores a tied weight once)."""
    seen = set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        yield name, t.detach().contiguous().cpu()  # no copy on the CPU; from a GPU, one tensor at a time


def run_rait(
    sft: str,
    out_dir: str | Path,
    examples: Sequence[C.Example],
    options: RaitOptions = RaitOptions(),
    *,
    base: str | None = None,
    trust_remote_code: bool = False,
    placement: Placement | None = None,
) -> dict:
    """RAIT on ``sft``: writes the re-tuned model as an HF folder (and the LoRA adapter beside it).

    The model is loaded in float32 whatever ``placement`` says: those are the master weights that
    bf16 training (autocast) updates, and what the folder stores. None: CPU float32, as before.
    """
    out_dir = Path(out_dir)
    src = locate(sft, base)
    model = load_model(src, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if placement is not None and placement.device.type != "cpu":
        model = model.to(placement.device)
    tokenizer = load_tokenizer(src, trust_remote_code=trust_remote_code)
    budget = list(examples) if options.examples is None else budget_examples(examples, options.examples)
    adapter_dir = out_dir.with_name(out_dir.name + "-adapter") if options.mode == "lora" else None
    merged, info = train_rait(model, tokenizer, budget, options, adapter_dir, placement)
    side = [src.path, src.config_dir] if src.adapter_base is not None else [src.path]
    write_safetensors_folder(
        model_tensors(merged),
        out_dir,
        side,
        extra_files={"surgery_provenance.json": json.dumps({"made_by": "RAIT", **info}, indent=2)},
    )
    info["checkpoint_bytes"] = sum(f.stat().st_size for f in out_dir.glob("*.safetensors"))
    return info
