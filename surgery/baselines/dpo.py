"""DPO on honest-vs-fabricated answer pairs (the paper's strongest baseline), through ``trl``.

Pairs come from the same IDK-relabelled questions as RAIT: for a question the model cannot know, the
honest "I don't know" is preferred to the answer the SFT model itself makes up (questions it already
refuses are skipped: there is nothing fabricated to push down); for a question it knows, the gold
answer is preferred to "I don't know", so DPO is not rewarded for refusing everything. LoRA (default)
keeps the frozen SFT weights as the reference model, so no second copy is held in memory.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from .. import install_hint
from ..devices import Placement
from ..errors import MissingExtraError, SurgeryError
from ..evaluation.refusal import default_matcher
from ..hcnr.calibration_sets import IDK_RESPONSE, Example
from ..modelio import load_model, load_tokenizer, locate, write_safetensors_folder
from ..options import opt
from ..progress import quiet
from ..prompting import as_messages, has_chat_template, prompt_text
from ..training.lora import ADAPTER_WEIGHTS, default_target_modules, save_adapter
from .options import TrainOptions
from .rait import model_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DpoOptions(TrainOptions):
    """How DPO trains; ``examples`` (preference pairs) and ``seconds`` are the budgets."""

    METHOD: ClassVar[str] = "DPO"
    UNIT: ClassVar[str] = "pair"
    DEFAULT_LR: ClassVar[dict[str, float]] = {"lora": 2e-4, "full": 5e-7}

    beta: float = opt(0.1, "DPO's beta: how far the tuned model may move from the reference model.")


def require_trl():
    """The ``trl`` module, or a one-sentence error saying how to install it."""
    try:
        import trl
    except ImportError:
        raise MissingExtraError(f"DPO needs the 'trl' package: {install_hint('dev')} (or pip install trl).") from None
    return trl


def fabricated_answers(
    generator, examples: Sequence[Example], *, max_new_tokens: int = 32, matcher=None
) -> dict[str, str]:
    """id -> the model's own answer to each IDK-labelled question it does not refuse."""
    matcher = matcher or default_matcher()
    unknown = [ex for ex in examples if ex["response"] == IDK_RESPONSE]
    if not unknown:
        return {}
    answers = generator.generate([ex["prompt"] for ex in unknown], max_new_tokens)
    return {ex["id"]: a for ex, a in zip(unknown, answers) if a.strip() and not matcher.is_refusal(a)}


def preference_pairs(examples: Sequence[Example], fabricated: dict[str, str]) -> list[dict]:
    """``{"id", "prompt", "chosen", "rejected"}`` rows in the order of ``examples``."""
    pairs = []
    for ex in examples:
        if ex["response"] == IDK_RESPONSE:
            if ex["id"] in fabricated:
                pairs.append(
                    {"id": ex["id"], "prompt": ex["prompt"], "chosen": IDK_RESPONSE, "rejected": fabricated[ex["id"]]}
                )
        else:
            pairs.append({"id": ex["id"], "prompt": ex["prompt"], "chosen": ex["response"], "rejected": IDK_RESPONSE})
    return pairs


def _trl_rows(tokenizer, pairs: Sequence[dict]) -> list[dict]:
    """Conversational rows where the model has a chat template (trl renders them like prompting.py)."""
    if has_chat_template(tokenizer):
        return [
            {
                "prompt": as_messages(p["prompt"]),
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    return [
        {"prompt": prompt_text(tokenizer, p["prompt"]), "chosen": " " + p["chosen"], "rejected": " " + p["rejected"]}
        for p in pairs
    ]


def _time_budget(seconds: float | None):
    """A trainer callback that stops training after the step that crosses ``seconds`` (None: never)."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def __init__(self, seconds: float | None):
            self.seconds, self.t0 = seconds, time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self.seconds is not None and time.perf_counter() - self.t0 >= self.seconds:
                control.should_training_stop = True
            return control

    return TimeBudget(seconds)


def _dpo_trainer(
    model, tokenizer, pairs: Sequence[dict], options: DpoOptions, work: Path, placement: Placement | None = None
):
    """trl's DPOTrainer set up with the options (one epoch, linear decay, no checkpoints).

    On the CPU unless ``placement`` names a GPU (the trainer then places the model itself, on its first
    visible GPU: choose another with CUDA_VISIBLE_DEVICES); with bfloat16 the trainer's ``bf16`` mixed
    precision, i.e. bf16 autocast over float32 master weights, never float16.
    """
    on_cpu = placement is None or placement.device.type == "cpu"
    bf16 = placement is not None and placement.dtype_name == "bfloat16"
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    peft_config = None
    if options.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=options.r,
            lora_alpha=options.alpha,
            lora_dropout=0.0,
            bias="none",
            target_modules=default_target_modules(model),
            task_type="CAUSAL_LM",
        )
    config = DPOConfig(
        output_dir=str(work),
        per_device_train_batch_size=options.batch_size,
        num_train_epochs=1,
        learning_rate=options.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        beta=options.beta,
        max_length=options.max_length,
        seed=options.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=on_cpu,
        bf16=bf16,
        disable_tqdm=quiet(),
        dataloader_num_workers=0,
    )
    return DPOTrainer(
        model=model,
        args=config,
        processing_class=tokenizer,
        peft_config=peft_config,
        train_dataset=Dataset.from_list(_trl_rows(tokenizer, pairs)),
        callbacks=[_time_budget(options.seconds)],
    )


def _dpo_info(trainer, pairs: Sequence[dict], options: DpoOptions, train_seconds: float) -> dict:
    """What a DPO run reports: steps, pairs used, losses and the last reward margin."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    margins = [h["rewards/margins"] for h in trainer.state.log_history if "rewards/margins" in h]
    steps = trainer.state.global_step
    return {
        "steps": steps,
        "examples_used": min(len(pairs), steps * options.batch_size),
        "examples_offered": len(pairs),
        "train_seconds": round(train_seconds, 3),
        "loss_first": round(losses[0], 4) if losses else None,
        "loss_last": round(losses[-1], 4) if losses else None,
        "reward_margin_last": round(margins[-1], 4) if margins else None,
    }


def train_dpo(
    model,
    tokenizer,
    pairs: Sequence[dict],
    options: DpoOptions = DpoOptions(),
    adapter_dir: Path | None = None,
    placement: Placement | None = None,
):
    """DPO-tune ``model`` on ``pairs``; returns (plain merged model, info dict).

    With LoRA and ``adapter_dir`` the adapter is also saved there (float16) before it is merged.
    ``placement``: device and training precision (see :func:`_dpo_trainer`); None is the CPU in float32.
    """
    require_trl()
    if not pairs:
        raise SurgeryError("DPO has no preference pairs to train on.")
    work = Path(tempfile.mkdtemp(prefix="surgery-dpo-"))  # trl's scratch output_dir; nothing is kept
    threads = torch.get_num_threads()
    try:
        trainer = _dpo_trainer(model, tokenizer, pairs, options, work, placement)
        t0 = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(work, ignore_errors=True)
    trained = trainer.model
    adapter_params = adapter_bytes = None
    if options.mode == "lora":
        adapter_params = sum(p.numel() for n, p in trained.named_parameters() if "lora_" in n)
        if adapter_dir is not None:
            adapter_bytes = (save_adapter(trained, Path(adapter_dir)) / ADAPTER_WEIGHTS).stat().st_size
        trained = trained.merge_and_unload()
    trained.eval()
    info = {
        **_dpo_info(trainer, pairs, options, train_seconds),
        "adapter_parameters": adapter_params,
        "adapter_bytes": adapter_bytes,
        "options": options.to_dict(),
        "precision": placement.record() if placement is not None else {"device": "cpu", "dtype": "float32"},
    }
    return trained, info


def run_dpo(
    sft: str,
    out_dir: str | Path,
    pairs: Sequence[dict],
    options: DpoOptions = DpoOptions(),
    *,
    base: str | None = None,
    trust_remote_code: bool = False,
    placement: Placement | None = None,
) -> dict:
    """DPO on ``sft`` with the first ``options.examples`` pairs; writes an HF folder.

    The model is loaded in float32 (the master weights) whatever ``placement``'s dtype.
    """
    require_trl()
    out_dir = Path(out_dir)
    src = locate(sft, base)
    model = load_model(src, dtype=torch.float32, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(src, trust_remote_code=trust_remote_code)
    use = list(pairs) if options.examples is None else list(pairs)[: options.examples]
    if options.examples is not None and options.examples > len(pairs):
        log.warning(
            "DPO budget %d exceeds the %d pairs available: all %d are used once",
            options.examples,
            len(pairs),
            len(pairs),
        )
    adapter_dir = out_dir.with_name(out_dir.name + "-adapter") if options.mode == "lora" else None
    trained, info = train_dpo(model, tokenizer, use, options, adapter_dir, placement)
    side = [src.path, src.config_dir] if src.adapter_base is not None else [src.path]
    write_safetensors_folder(
        model_tensors(trained),
        out_dir,
        side,
        extra_files={"surgery_provenance.json": json.dumps({"made_by": "DPO", **info}, indent=2)},
    )
    info["checkpoint_bytes"] = sum(f.stat().st_size for f in out_dir.glob("*.safetensors"))
    return info
