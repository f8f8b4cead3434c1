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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import SurgeryError
from ..pair import data as D
from ..prompting import as_messages, has_chat_template, prompt_text

log = logging.getLogger(__name__)

MODES = ("lora", "full")


@dataclass(frozen=True)
class DpoOptions:
    """How DPO trains; ``examples`` (preference pairs) and ``seconds`` are the budgets."""

    mode: str = "lora"
    examples: int | None = 480
    seconds: float | None = None
    beta: float = 0.1
    r: int = 16
    alpha: int = 32
    lr: float | None = None  # None: 2e-4 for LoRA, 5e-7 for the full fine-tune
    batch_size: int = 8
    max_length: int = 96
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SurgeryError(f"DPO mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        if self.examples is None and self.seconds is None:
            raise SurgeryError("DPO needs a budget: a number of pairs, seconds, or both.")
        if self.examples is not None and self.examples < 1:
            raise SurgeryError(f"DPO needs at least one pair, got {self.examples}.")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.mode == "lora" else 5e-7)

    def to_dict(self) -> dict:
        return {**asdict(self), "lr": self.learning_rate}


def require_trl():
    """The ``trl`` module, or a one-sentence error saying how to install it."""
    try:
        import trl
    except ImportError:
        raise SurgeryError("DPO needs the 'trl' package: pip install 'surgery[dev]' (or pip install trl).") from None
    return trl


def fabricated_answers(generator, examples: Sequence[D.Example], *, max_new_tokens: int = 32,
                       matcher=None) -> dict[str, str]:
    """id -> the model's own answer to each IDK-labelled question it does not refuse."""
    from ..evaluation.refusal import default_matcher

    matcher = matcher or default_matcher()
    unknown = [ex for ex in examples if ex["response"] == D.IDK_RESPONSE]
    if not unknown:
        return {}
    answers = generator.generate([ex["prompt"] for ex in unknown], max_new_tokens)
    return {ex["id"]: a for ex, a in zip(unknown, answers) if a.strip() and not matcher.is_refusal(a)}


def preference_pairs(examples: Sequence[D.Example], fabricated: dict[str, str]) -> list[dict]:
    """``{"id", "prompt", "chosen", "rejected"}`` rows in the order of ``examples``."""
    pairs = []
    for ex in examples:
        if ex["response"] == D.IDK_RESPONSE:
            if ex["id"] in fabricated:
                pairs.append({"id": ex["id"], "prompt": ex["prompt"], "chosen": D.IDK_RESPONSE,
                              "rejected": fabricated[ex["id"]]})
        else:
            pairs.append({"id": ex["id"], "prompt": ex["prompt"], "chosen": ex["response"],
                          "rejected": D.IDK_RESPONSE})
    return pairs


def _trl_rows(tokenizer, pairs: Sequence[dict]) -> list[dict]:
    """Conversational rows where the model has a chat template (trl renders them like prompting.py)."""
    if has_chat_template(tokenizer):
        return [{"prompt": as_messages(p["prompt"]),
                 "chosen": [{"role": "assistant", "content": p["chosen"]}],
                 "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    return [{"prompt": prompt_text(tokenizer, p["prompt"]), "chosen": " " + p["chosen"],
             "rejected": " " + p["rejected"]} for p in pairs]


def train_dpo(model, tokenizer, pairs: Sequence[dict], options: DpoOptions = DpoOptions(),
              adapter_dir: Path | None = None):
    """DPO-tune ``model`` on ``pairs``; returns (plain merged model, info dict).

    With LoRA and ``adapter_dir`` the adapter is also saved there (float16) before it is merged.
    """
    require_trl()
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from ..pair.train import default_target_modules
    from ..progress import quiet

    if not pairs:
        raise SurgeryError("DPO has no preference pairs to train on.")

    class TimeBudget(TrainerCallback):
        def __init__(self, seconds: float | None):
            self.seconds, self.t0 = seconds, time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self.seconds is not None and time.perf_counter() - self.t0 >= self.seconds:
                control.should_training_stop = True
            return control

    peft_config = None
    if options.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=0.0, bias="none",
                                 target_modules=default_target_modules(model), task_type="CAUSAL_LM")
    work = Path(tempfile.mkdtemp(prefix="surgery-dpo-"))
    threads = torch.get_num_threads()
    try:
        config = DPOConfig(output_dir=str(work), per_device_train_batch_size=options.batch_size, num_train_epochs=1,
                           learning_rate=options.learning_rate, lr_scheduler_type="linear", warmup_steps=0,
                           beta=options.beta, max_length=options.max_length, seed=options.seed,
                           logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                           disable_tqdm=quiet(), dataloader_num_workers=0)
        trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer, peft_config=peft_config,
                             train_dataset=Dataset.from_list(_trl_rows(tokenizer, pairs)),
                             callbacks=[TimeBudget(options.seconds)])
        t0 = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(work, ignore_errors=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    margins = [h["rewards/margins"] for h in trainer.state.log_history if "rewards/margins" in h]
    trained = trainer.model
    adapter_params = adapter_bytes = None
    if options.mode == "lora":
        from ..pair.train import ADAPTER_WEIGHTS, save_adapter

        adapter_params = sum(p.numel() for n, p in trained.named_parameters() if "lora_" in n)
        if adapter_dir is not None:
            adapter_bytes = (save_adapter(trained, Path(adapter_dir)) / ADAPTER_WEIGHTS).stat().st_size
        trained = trained.merge_and_unload()
    trained.eval()
    steps = trainer.state.global_step
    info = {
        "steps": steps,
        "examples_used": min(len(pairs), steps * options.batch_size),
        "examples_offered": len(pairs),
        "train_seconds": round(train_seconds, 3),
        "loss_first": round(losses[0], 4) if losses else None,
        "loss_last": round(losses[-1], 4) if losses else None,
        "reward_margin_last": round(margins[-1], 4) if margins else None,
        "adapter_parameters": adapter_params,
        "adapter_bytes": adapter_bytes,
        "options": options.to_dict(),
    }
    return trained, info


def run_dpo(sft: str, out_dir: str | Path, pairs: Sequence[dict], options: DpoOptions = DpoOptions(), *,
            base: str | None = None, trust_remote_code: bool = False) -> dict:
    """DPO on ``sft`` with the first ``options.examples`` pairs; writes an HF folder."""
    from ..modelio import load_model, load_tokenizer, locate, write_safetensors_folder
    from .rait import model_tensors

    require_trl()
    out_dir = Path(out_dir)
    src = locate(sft, base)
    model = load_model(src, dtype=torch.float32, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(src, trust_remote_code=trust_remote_code)
    use = list(pairs) if options.examples is None else list(pairs)[:options.examples]
    if options.examples is not None and options.examples > len(pairs):
        log.warning("DPO budget %d exceeds the %d pairs available: all %d are used once",
                    options.examples, len(pairs), len(pairs))
    adapter_dir = out_dir.with_name(out_dir.name + "-adapter") if options.mode == "lora" else None
    trained, info = train_dpo(model, tokenizer, use, options, adapter_dir)
    side = [src.path, src.config_dir] if src.adapter_base is not None else [src.path]
    write_safetensors_folder(model_tensors(trained), out_dir, side,
                             extra_files={"surgery_provenance.json": json.dumps({"made_by": "DPO", **info}, indent=2)})
    info["checkpoint_bytes"] = sum(f.stat().st_size for f in out_dir.glob("*.safetensors"))
    return info
