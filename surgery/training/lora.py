"""LoRA fine-tuning on prompt/response pairs, loss on the response only; seeded and deterministic.

Used by the baselines (RAIT, DPO's LoRA settings) and to build the demo pair (honesty alignment, then
domain SFT); it depends on neither.
Everything that changes the result is an argument, so a recipe file can record it and a rerun with
the same torch version and thread count reproduces the adapter bit for bit: LoRA dropout is 0, the
shuffle uses its own seeded generator, and the LoRA initialisation is seeded right before it runs.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import atomic_folder
from ..devices import Placement, autocast
from ..linear_layers import find_linear_layers
from ..progress import progress
from ..prompting import encode_example

log = logging.getLogger(__name__)

Example = tuple  # (prompt: str | list[message], response: str)
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def as_pairs(examples: Sequence[dict]) -> list[tuple[str, str]]:
    """(prompt, response) tuples for :func:`train_lora` from ``{"prompt", "response", ...}`` dicts."""
    return [(ex["prompt"], ex["response"]) for ex in examples]


def default_target_modules(model) -> list[str]:
    """Leaf names of every linear layer inside the transformer blocks (q/k/v/o/gate/up/down, ...)."""
    return sorted({layer.module.rsplit(".", 1)[-1] for layer in find_linear_layers(model)})


def encode_examples(tokenizer, examples: Sequence[Example], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and response-only labels, cut to ``max_length``; examples left without labels are dropped."""
    out = []
    for prompt, response in examples:
        ids, labels = encode_example(tokenizer, prompt, response)
        ids, labels = ids[:max_length], labels[:max_length]
        if any(t != -100 for t in labels[1:]):
            out.append((ids, labels))
        else:
            log.warning("dropping an example whose response does not fit in %d tokens", max_length)
    return out


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding is masked out of attention and loss."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def response_only_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal-LM loss with the output head applied to response positions only.

    Equal to ``model(**batch).loss`` (mean cross-entropy over the labelled next tokens), but the
    vocabulary projection runs on the few positions that carry a label instead of on every token.
    With a 262k vocabulary (Gemma 3) the head is over half of a training step's work; prompts and
    padding need none of it. Model-agnostic: a pre-hook on ``get_output_embeddings()`` gathers the
    labelled rows of the hidden states just before the head (soft-capping etc. still apply after it).
    """
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = F.pad(targets != -100, (0, 1), value=False)  # position t predicts token t+1
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("response_only_loss needs a model with an output head (get_output_embeddings)")

    def gather(_module, args):
        hidden = args[0]
        if hidden.shape[:2] != keep.shape:
            raise ValueError(
                f"output head saw hidden states of shape {tuple(hidden.shape)}, expected "
                f"{tuple(keep.shape)} + (hidden,); use the plain loss for this model"
            )
        return (hidden[keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        handle.remove()
    return F.cross_entropy(logits[0].float(), targets[targets != -100])


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with (the EOS id when the tokenizer has no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def plain_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own causal-LM loss over the labelled positions."""
    return model(**batch).loss


def train_steps(
    model,
    data: Sequence[tuple[list[int], list[int]]],
    params: list,
    *,
    pad_id: int,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    max_seconds: float | None = None,
    loss_fn: Callable = plain_loss,
    desc: str = "training",
    placement: Placement | None = None,
) -> list[float]:
    """The shared training loop: AdamW, linear decay to 0 without warm-up, a seeded shuffle per epoch.

    Stops after the first step that ends past ``max_seconds``. Returns the loss of every step; the
    LoRA and the full fine-tune both run through here so that they differ only in what they train.
    ``placement`` (:mod:`surgery.devices`): batches go to its device (where the model must already be),
    and with bfloat16 the forward pass runs under bf16 autocast while the parameters, their gradients
    and AdamW's state stay float32 (master weights; never float16). None: today's CPU float32 loop.
    """
    steps_per_epoch = (len(data) + batch_size - 1) // batch_size
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / total)
    rng = random.Random(seed)
    bar = iter(progress(range(total), desc=desc, total=total, unit="step"))
    losses: list[float] = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = list(range(len(data)))
        rng.shuffle(order)
        for s in range(steps_per_epoch):
            batch = collate([data[i] for i in order[s * batch_size : (s + 1) * batch_size]], pad_id)
            if placement is None:
                loss = loss_fn(model, batch)
            else:
                batch = {k: v.to(placement.device) for k, v in batch.items()}
                with autocast(placement):
                    loss = loss_fn(model, batch)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            next(bar, None)
            if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                log.info("stopped after %d steps: the %.0f s budget is spent", len(losses), max_seconds)
                return losses
        log.info("epoch %d: mean loss %.4f", epoch + 1, sum(losses[-steps_per_epoch:]) / steps_per_epoch)
    return losses


def train_lora(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    r: int = 16,
    alpha: int = 32,
    lr: float = 5e-4,
    epochs: int = 2,
    batch_size: int = 8,
    max_length: int = 96,
    seed: int = 0,
    target_modules: Sequence[str] | None = None,
    max_seconds: float | None = None,
    response_logits_only: bool = False,
    placement: Placement | None = None,
):
    """Wrap ``model`` in a fresh LoRA adapter and train it (AdamW, linear decay, no warm-up).

    ``response_logits_only`` computes the loss through :func:`response_only_loss` (same loss, the
    output head on labelled positions only): about 2x faster for large vocabularies, but not bit-equal
    to the plain loss, so a recipe records which one built its adapters.

    ``max_seconds`` (optional) stops after the first step that ends past that wall-clock budget.
    ``placement``: the device the model is on and the training precision (see :func:`train_steps`).
    Returns the ``peft`` model in eval mode; ``merge_and_unload()`` gives the plain model back.
    """
    from peft import LoraConfig, get_peft_model

    if not examples:
        raise ValueError("train_lora needs at least one example")
    data = encode_examples(tokenizer, examples, max_length)
    modules = list(target_modules) if target_modules else default_target_modules(model)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=modules, task_type="CAUSAL_LM"
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    peft_model.train()
    losses = train_steps(
        peft_model,
        data,
        params,
        pad_id=pad_token_id(tokenizer),
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        max_seconds=max_seconds,
        loss_fn=response_only_loss if response_logits_only else plain_loss,
        desc=f"LoRA r={r} ({len(data)} ex.)",
        placement=placement,
    )
    peft_model.eval()
    peft_model.training_losses = losses
    return peft_model


def save_adapter(
    peft_model, out_dir: Path, *, dtype: torch.dtype = torch.float16, base_model_name_or_path: str | None = None
) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (weights cast to ``dtype``) atomically.

    Tensors are written in sorted order with fixed metadata, so equal weights give equal bytes.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = get_peft_model_state_dict(peft_model)
    tensors = {k: state[k].detach().to(dtype).contiguous() for k in sorted(state)}
    config = peft_model.peft_config["default"].to_dict()
    for key in ("revision", "runtime_config"):
        config.pop(key, None)
    if base_model_name_or_path is not None:
        config["base_model_name_or_path"] = base_model_name_or_path
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    with atomic_folder(out_dir) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return out_dir


def merge_adapter(model, adapter_dir: Path):
    """``model`` with the adapter at ``adapter_dir`` merged into its weights (a plain HF model)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
