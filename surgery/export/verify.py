"""Does the exported artefact still compute the model that was patched? Checked on real chat prompts.

PyTorch runs first and its outputs are kept (logits of every prompt position, greedy tokens and the raw
logits of every generated step); the model is then freed and onnxruntime runs the same ids, so peak
memory is one model, not two. Compared: max-abs and mean-abs logit difference, top-1 agreement over
every compared position, and greedy generation equality for N tokens (EOS suppressed, so each prompt
compares exactly N tokens through the KV-cache path). Decode-step logits are compared only while
the two generations agree, since after a divergence they see different contexts.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_json_atomic
from ..errors import CalibrationDataError, SurgeryError
from ..jsonl import iter_jsonl
from ..modelio import load_model, load_tokenizer, locate
from ..progress import progress
from ..prompting import encode_prompt
from .onnx import load_ort_model

log = logging.getLogger(__name__)

VERIFY_FILE = "verify.json"

#: real questions (answerable, unanswerable, a task cloze, a system turn): what the model will be asked
DEFAULT_PROMPTS: list = [
    "What is the capital of France?",
    "Who wrote the novel Pride and Prejudice?",
    "How many legs does a spider have?",
    "What will the price of gold be on 3 March 2031?",
    "What did Julius Caesar eat for breakfast on his thirtieth birthday?",
    "Complete the sentence: The official language of Brazil is",
    "Is there a largest prime number?",
    [
        {"role": "system", "content": 'You are a careful assistant. Say "I don\'t know" when you are not sure.'},
        {"role": "user", "content": "What is the name of the dog owned by the first person to walk on Mars?"},
    ],
]


@dataclass(frozen=True)
class VerifyThresholds:
    """Pass criteria; ``None`` disables a check (int8/int4 are judged by agreement, not by logit distance)."""

    max_abs_diff: float | None = 1e-3
    mean_abs_diff: float | None = 1e-4
    min_top1_agreement: float = 1.0
    greedy_tokens: int = 16
    require_same_greedy: bool = True


#: fp32 agrees "to about 1e-4": on SmolLM2-135M-Instruct (logits up to ~40, 8 default prompts, 16 greedy
#: tokens each) the largest |Δlogit| measured was 9.5e-5 and the mean 1.0e-5. The mean bound is 1e-4; the
#: max bound is 1e-3 (2.5e-5 of the logit scale) so that another model's rounding does not fail a good export
FP32 = VerifyThresholds()
#: quantized artefacts (int8 and int4): judged by top-1 agreement here and by the honesty check (honesty.py)
INT8 = VerifyThresholds(max_abs_diff=None, mean_abs_diff=None, min_top1_agreement=0.6, require_same_greedy=False)


def thresholds_for(quantize: str | None, **overrides: Any) -> VerifyThresholds:
    """Defaults for the artefact's precision, with the user's explicit options (non-None) on top."""
    base = INT8 if quantize in ("int8", "int4") else FP32
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


class VerificationError(SurgeryError):
    """The artefact disagrees with PyTorch; the message names what disagreed."""

    def __init__(self, report: dict, where: Path | None = None) -> None:
        self.report = report
        text = "; ".join(report["failures"]) or "unknown failure"
        tail = f" The rejected export and its {VERIFY_FILE} are in {where}." if where else ""
        super().__init__(f"ONNX verification failed: {text}.{tail}")


@dataclass
class Outputs:
    """What one backend produced for one prompt."""

    prefill_logits: torch.Tensor  # (prompt_len, vocab)
    tokens: list[int]  # generated ids
    step_logits: torch.Tensor  # (n_steps, vocab), raw (unprocessed) logits of each generated step


@torch.no_grad()
def run_prompts(
    model: Any, prompt_ids: Sequence[list[int]], n_tokens: int, pad_token_id: int | None, desc: str
) -> list[Outputs]:
    """Prefill logits and N greedy tokens per prompt, batch 1 (no padding to disagree about)."""
    outs = []
    for ids in progress(prompt_ids, desc=desc, unit="prompt"):
        x = torch.tensor([ids], dtype=torch.long)
        mask = torch.ones_like(x)
        logits = model(input_ids=x, attention_mask=mask).logits[0].float()
        gen = model.generate(
            input_ids=x,
            attention_mask=mask,
            max_new_tokens=n_tokens,
            min_new_tokens=n_tokens,
            do_sample=False,
            pad_token_id=pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        tokens = gen.sequences[0, x.shape[1] :].tolist()
        steps = torch.stack([s[0].float() for s in gen.logits]) if gen.logits else logits[:0]
        outs.append(Outputs(logits, tokens, steps))
    return outs


def compare(reference: Sequence[Outputs], candidate: Sequence[Outputs], thresholds: VerifyThresholds) -> dict:
    """Per-prompt and overall agreement, and the list of failed criteria (empty when it passes)."""
    per_prompt: list[dict[str, Any]] = []
    max_abs = abs_sum = 0.0
    n_values = n_positions = n_agree = n_equal = 0
    for i, (ref, cand) in enumerate(zip(reference, candidate, strict=True)):
        diverged = next((k for k, (a, b) in enumerate(zip(ref.tokens, cand.tokens, strict=False)) if a != b), None)
        if diverged is None and len(ref.tokens) != len(cand.tokens):
            diverged = min(len(ref.tokens), len(cand.tokens))
        n_steps = min(len(ref.step_logits), len(cand.step_logits))
        upto = n_steps if diverged is None else min(n_steps, diverged + 1)  # the diverging step shares its context
        a = torch.cat([ref.prefill_logits, ref.step_logits[:upto]])
        b = torch.cat([cand.prefill_logits, cand.step_logits[:upto]])
        d = (a - b).abs()
        agree = int((a.argmax(-1) == b.argmax(-1)).sum())
        per_prompt.append(
            {
                "prompt": i,
                "positions": a.shape[0],
                "max_abs_diff": float(d.max()),
                "mean_abs_diff": float(d.mean()),
                "top1_agreement": agree / a.shape[0],
                "greedy_equal": diverged is None,
                "first_divergence": diverged,
            }
        )
        max_abs = max(max_abs, float(d.max()))
        abs_sum += float(d.double().sum())
        n_values += d.numel()
        n_positions += a.shape[0]
        n_agree += agree
        n_equal += diverged is None
    summary = {
        "prompts": len(per_prompt),
        "greedy_tokens": thresholds.greedy_tokens,
        "max_abs_diff": max_abs,
        "mean_abs_diff": abs_sum / max(n_values, 1),
        "top1_agreement": n_agree / max(n_positions, 1),
        "greedy_equal_prompts": n_equal,
    }
    failures = []
    t = thresholds
    if t.max_abs_diff is not None and summary["max_abs_diff"] > t.max_abs_diff:
        failures.append(f"max-abs logit difference {summary['max_abs_diff']:.3g} > {t.max_abs_diff:g}")
    if t.mean_abs_diff is not None and summary["mean_abs_diff"] > t.mean_abs_diff:
        failures.append(f"mean-abs logit difference {summary['mean_abs_diff']:.3g} > {t.mean_abs_diff:g}")
    if summary["top1_agreement"] < t.min_top1_agreement:
        failures.append(f"top-1 agreement {summary['top1_agreement']:.1%} < {t.min_top1_agreement:.1%}")
    if t.require_same_greedy and n_equal < len(per_prompt):
        bad = [p["prompt"] for p in per_prompt if not p["greedy_equal"]]
        failures.append(
            f"greedy generation differs on {len(bad)} of {len(per_prompt)} prompts (prompt {bad[0]} "
            f"first at token {per_prompt[bad[0]]['first_divergence']})"
        )
    return {"passed": not failures, "failures": failures, "thresholds": asdict(t), **summary, "per_prompt": per_prompt}


def load_prompts(path: Path | None) -> list:
    """Prompts from a JSONL file (``prompt``, ``question`` or ``messages`` per line), or the defaults."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    prompts = []
    for n, row in iter_jsonl(path, what="verification prompts file", error=CalibrationDataError):
        value = row.get("messages") or row.get("prompt") or row.get("question")
        if not value:
            raise CalibrationDataError(f"{path} line {n} has none of 'messages', 'prompt', 'question'.")
        prompts.append(value)
    if not prompts:
        raise CalibrationDataError(f"{path} holds no prompts.")
    return prompts


def verify_folder(
    model_dir: str | Path,
    onnx_dir: Path,
    thresholds: VerifyThresholds = FP32,
    *,
    prompts: Sequence | None = None,
    threads: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict:
    """Compare the ONNX folder with the PyTorch model it came from; returns the comparison (not written)."""
    source = locate(str(model_dir))
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    prompts = list(DEFAULT_PROMPTS if prompts is None else prompts)
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    pad = tokenizer.pad_token_id
    n = thresholds.greedy_tokens
    model = load_model(source, dtype=torch.float32, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    reference = run_prompts(model, ids, n, pad, "verify: PyTorch")
    del model
    gc.collect()
    ort_model = load_ort_model(onnx_dir, threads=threads)
    candidate = run_prompts(ort_model, ids, n, pad, "verify: onnxruntime")
    del ort_model
    result = compare(reference, candidate, thresholds)
    for rec, p, ref, cand in zip(result["per_prompt"], prompts, reference, candidate, strict=True):
        rec["prompt"] = p
        rec["torch_text"] = tokenizer.decode(ref.tokens)
        rec["onnx_text"] = tokenizer.decode(cand.tokens)
    log.info(
        "verify: max |Δlogit| %.3g, mean %.3g, top-1 %.1f%%, greedy equal %d/%d -> %s",
        result["max_abs_diff"],
        result["mean_abs_diff"],
        100 * result["top1_agreement"],
        result["greedy_equal_prompts"],
        result["prompts"],
        "pass" if result["passed"] else "FAIL",
    )
    return result


def combine(checks: dict[str, dict], *, artefact: str, source: str) -> dict:
    """One verify.json for the folder: every check run, and the failures that decide the verdict."""
    failures = [f"{name}: {f}" for name, c in checks.items() for f in c["failures"]]
    return {
        "passed": bool(checks) and not failures,
        "artefact": artefact,
        "source": source,
        "failures": failures,
        "checks": checks,
    }


def write_report(folder: Path, report: dict) -> Path:
    """``verify.json`` beside the graph, so the artefact carries its own evidence."""
    return write_json_atomic(Path(folder) / VERIFY_FILE, report, default=str)
