"""RAIT (refusal-aware instruction tuning): re-tune the SFT model on IDK-relabelled data.

The relabelling follows the pair recipe (R-Tuning style): answerable questions the model itself
answers correctly keep their gold answer (PKQA, popular knowledge, fills the answerable half), and
unanswerable questions (SelfAware-unanswerable, PUQA) get the fixed "I don't know" answer. Every
question comes from the "train" split and the "fit" purpose, so RAIT never sees an evaluation item
nor a calibration item of the patch.

Budgets: a number of examples (a prefix of one fixed, balanced order, so a small budget is nested in
a larger one; budgets beyond the pool repeat it) and/or a wall-clock budget in seconds (training stops
after the step that crosses it). LoRA goes through :func:`surgery.pair.train.train_lora`; the full
fine-tune uses the same encoding, batching, optimiser and schedule on every weight.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import SurgeryError
from ..pair import data as D
from ..pair.train import ADAPTER_WEIGHTS, collate, encode_examples, save_adapter, train_lora
from ..progress import progress

log = logging.getLogger(__name__)

MODES = ("lora", "full")


@dataclass(frozen=True)
class RaitOptions:
    """How RAIT trains; ``examples``/``seconds`` are the budgets (either or both)."""

    mode: str = "lora"
    examples: int | None = 480
    seconds: float | None = None
    r: int = 16
    alpha: int = 32
    lr: float | None = None  # None: 5e-4 for LoRA, 1e-5 for the full fine-tune
    batch_size: int = 8
    max_length: int = 96
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SurgeryError(f"RAIT mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        if self.examples is None and self.seconds is None:
            raise SurgeryError("RAIT needs a budget: a number of examples, seconds, or both.")
        if self.examples is not None and self.examples < 1:
            raise SurgeryError(f"RAIT needs at least one example, got {self.examples}.")
        if self.seconds is not None and self.seconds <= 0:
            raise SurgeryError(f"The RAIT time budget must be positive, got {self.seconds}.")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (5e-4 if self.mode == "lora" else 1e-5)

    def to_dict(self) -> dict:
        return {**asdict(self), "lr": self.learning_rate}


def interleave(first: Sequence, second: Sequence) -> list:
    """a0, b0, a1, b1, ... then the rest of the longer list: every even-length prefix is balanced."""
    out = []
    for a, b in zip(first, second):
        out += [a, b]
    k = min(len(first), len(second))
    return out + list(first[k:]) + list(second[k:])


def relabelled_pool(generator, *, data_dir=None, probe: int = 400, seed: int = 0,
                    max_new_tokens: int = 32) -> list[D.Example]:
    """IDK-relabelled training questions in a fixed, balanced order (answer, IDK, answer, IDK, ...).

    ``generator`` is the model being re-tuned: its correct answers on ``probe`` SelfAware-answerable
    questions decide what it "knows". With ``generator=None`` nothing is probed and PKQA alone is the
    answerable half.
    """
    known: list = []
    if generator is not None and probe > 0:
        known = D.probe_known(generator, D.known_candidates(data_dir=data_dir, purpose="fit", n=probe, seed=seed),
                              max_new_tokens=max_new_tokens)
    rng = random.Random(seed)
    pkqa = list(D.train_pool("pkqa", "fit", data_dir=data_dir))
    rng.shuffle(pkqa)
    answerable = [D.answer_example(it) for it in list(known) + pkqa]
    unknown_items = (list(D.train_pool("selfaware", "fit", data_dir=data_dir, answerable=False))
                     + list(D.train_pool("puqa", "fit", data_dir=data_dir)))
    rng.shuffle(unknown_items)
    unknown = [D.idk_example(it) for it in unknown_items]
    if not answerable or not unknown:
        raise SurgeryError("The data folder has no train-split questions to relabel for RAIT.")
    log.info("RAIT pool: %d answerable (%d probed known), %d unknown", len(answerable), len(known), len(unknown))
    return interleave(answerable, unknown)


def budget_examples(pool: Sequence[D.Example], n: int) -> list[D.Example]:
    """The first ``n`` examples of ``pool``; past its end the pool is repeated (and the log says so)."""
    if not pool:
        raise SurgeryError("The RAIT training pool is empty.")
    if n > len(pool):
        log.warning("RAIT budget %d exceeds the %d unique examples: the pool is repeated %.1f times",
                    n, len(pool), n / len(pool))
    reps = -(-n // len(pool))
    return (list(pool) * reps)[:n]


def read_examples(path: str | Path) -> list[D.Example]:
    """A prompt/response JSONL (``{"prompt", "response"}`` a line) as training examples."""
    path = Path(path)
    if not path.is_file():
        raise SurgeryError(f"Training data {path} does not exist.")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise SurgeryError(f"Line {n} of {path} is not valid JSON.") from None
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise SurgeryError(f"Line {n} of {path} needs \"prompt\" and \"response\" strings.")
        out.append({"id": str(row.get("id", f"{path.stem}:{n}")), "prompt": row["prompt"], "response": row["response"]})
    if not out:
        raise SurgeryError(f"Training data {path} has no examples.")
    return out


def examples_seen(n_data: int, steps: int, batch_size: int) -> int:
    """Training examples actually consumed by ``steps`` one-pass steps over ``n_data`` examples."""
    per_epoch = -(-n_data // batch_size)
    full, part = divmod(steps, per_epoch)
    return full * n_data + min(n_data, part * batch_size)


def train_full(model, tokenizer, examples: Sequence[tuple], *, lr: float = 1e-5, batch_size: int = 8,
               max_length: int = 96, seed: int = 0, max_seconds: float | None = None):
    """Full fine-tune (every weight) with train_lora's recipe: response-only loss, AdamW, linear decay."""
    data = encode_examples(tokenizer, examples, max_length)
    if not data:
        raise SurgeryError("No RAIT example fits in the token budget.")
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = -(-len(data) // batch_size)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / steps)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for s in progress(range(steps), desc=f"full fine-tune ({len(data)} ex.)", total=steps, unit="step"):
        loss = model(**collate([data[i] for i in order[s * batch_size:(s + 1) * batch_size]], pad_id)).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
            break
    model.eval()
    model.training_losses = losses
    return model


def train_rait(model, tokenizer, examples: Sequence[D.Example], options: RaitOptions,
               adapter_dir: Path | None = None):
    """Re-tune ``model`` on ``examples``; returns (plain merged model, info dict).

    With LoRA and ``adapter_dir`` the adapter is also saved there (float16) before it is merged.
    """
    pairs = D.as_pairs(examples)
    t0 = time.perf_counter()
    if options.mode == "lora":
        peft_model = train_lora(model, tokenizer, pairs, r=options.r, alpha=options.alpha, lr=options.learning_rate,
                                epochs=1, batch_size=options.batch_size, max_length=options.max_length,
                                seed=options.seed, max_seconds=options.seconds)
        losses = peft_model.training_losses
        adapter_params = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        train_seconds = time.perf_counter() - t0
        adapter_bytes = None
        if adapter_dir is not None:
            adapter_bytes = (save_adapter(peft_model, Path(adapter_dir)) / ADAPTER_WEIGHTS).stat().st_size
        merged = peft_model.merge_and_unload()
    else:
        merged = train_full(model, tokenizer, pairs, lr=options.learning_rate, batch_size=options.batch_size,
                            max_length=options.max_length, seed=options.seed, max_seconds=options.seconds)
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
        yield name, t.detach().contiguous()


def run_rait(sft: str, out_dir: str | Path, examples: Sequence[D.Example], options: RaitOptions = RaitOptions(), *,
             base: str | None = None, trust_remote_code: bool = False) -> dict:
    """RAIT on ``sft``: writes the re-tuned model as an HF folder (and the LoRA adapter beside it)."""
    from ..modelio import load_model, load_tokenizer, locate, write_safetensors_folder

    out_dir = Path(out_dir)
    src = locate(sft, base)
    model = load_model(src, dtype=torch.float32, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(src, trust_remote_code=trust_remote_code)
    budget = list(examples) if options.examples is None else budget_examples(examples, options.examples)
    adapter_dir = out_dir.with_name(out_dir.name + "-adapter") if options.mode == "lora" else None
    merged, info = train_rait(model, tokenizer, budget, options, adapter_dir)
    side = [src.path, src.config_dir] if src.adapter_base is not None else [src.path]
    write_safetensors_folder(model_tensors(merged), out_dir, side,
                             extra_files={"surgery_provenance.json": json.dumps({"made_by": "RAIT", **info}, indent=2)})
    info["checkpoint_bytes"] = sum(f.stat().st_size for f in out_dir.glob("*.safetensors"))
    return info
