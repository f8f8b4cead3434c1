"""``surgery probe``: before paying for a patch, check the fine-tuned model still knows what it doesn't know."""

from __future__ import annotations

import gc
import logging
import shlex
from pathlib import Path

import click
import numpy as np

from ..errors import SurgeryError
from ..modelio import ModelSource, locate
from ..progress import StageTimer, peak_rss_mb
from .probes import (
    MIN_PER_CLASS,
    PRESERVED_AUROC,
    SEPARATES_AUROC,
    auroc_stderr,
    layer_aurocs,
    near_duplicate_groups,
    stratified_split,
    surface_auroc,
    verdict,
)

log = logging.getLogger(__name__)


def architecture(source: ModelSource, trust_remote_code: bool = False) -> dict:
    """The shape facts two models must share for their hidden states to be compared layer by layer."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(source.config_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise SurgeryError(f"Could not read the config of {source.identifier}: {str(exc).splitlines()[0]}") from None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return {
        "model_type": cfg.model_type,
        "num_hidden_layers": getattr(text, "num_hidden_layers", None),
        "hidden_size": getattr(text, "hidden_size", None),
    }


def check_same_architecture(base: ModelSource, sft: ModelSource, trust_remote_code: bool = False) -> dict:
    a, b = architecture(base, trust_remote_code), architecture(sft, trust_remote_code)
    if a != b:
        diff = ", ".join(f"{k} {a[k]} vs {b[k]}" for k in a if a[k] != b[k])
        raise SurgeryError(
            f"The base and fine-tuned models have different architectures ({diff}); the probe compares the "
            "same layers of both, so the fine-tuned model must be a fine-tune of the base."
        )
    return a


def model_states(source: ModelSource, prompts: list[str], *, label: str, batch_size: int, padding_side: str,
                 max_length: int, share_prefix: bool, trust_remote_code: bool, allow_pickle: bool) -> np.ndarray:
    """Load one model, take its last-prompt-token states, and free it before the next model loads."""
    from ..modelio import load_model, load_tokenizer
    from .hidden_states import prompt_states

    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    model = load_model(source, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    try:
        return prompt_states(model, tokenizer, prompts, batch_size=batch_size, padding_side=padding_side,
                             max_length=max_length, share_prefix=share_prefix, desc=f"{label} hidden states")
    finally:
        del model
        gc.collect()


def run_probe(
    sft: str,
    base: str,
    *,
    benchmark: str = "selfaware",
    limit: int | None = 400,
    seed: int = 0,
    data_dir: str | None = None,
    split: str = "eval",
    test_fraction: float = 0.3,
    c: float = 1.0,
    batch_size: int = 16,
    padding_side: str = "right",
    max_length: int = 1024,
    share_prefix: bool = True,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict:
    """The whole probe as a library call; returns the record that ``--json`` writes."""
    from ..evaluation.benchmarks import load_items

    if not 0.0 < test_fraction < 1.0:
        raise SurgeryError(f"--test-fraction must be between 0 and 1 (got {test_fraction}).")
    timer = StageTimer()
    with timer.stage("items"):
        items = load_items(benchmark, data_dir=data_dir, split=split, limit=limit, seed=seed)
        n_unans = sum(not it.answerable for it in items)
        n_ans = len(items) - n_unans
        if min(n_ans, n_unans) < MIN_PER_CLASS:
            raise SurgeryError(
                f"The probe needs at least {MIN_PER_CLASS} answerable and {MIN_PER_CLASS} unanswerable items, "
                f"but '{benchmark}' (split {split}) gave {n_ans} answerable and {n_unans} unanswerable."
            )
        sft_src = locate(sft, base_hint=base)
        base_src = locate(base)
        arch = check_same_architecture(base_src, sft_src, trust_remote_code)
        labels = np.array([0 if it.answerable else 1 for it in items])
        prompts = [it.question for it in items]
        groups = near_duplicate_groups(prompts)
        train_idx, test_idx = stratified_split([it.id for it in items], labels, test_fraction, seed, groups)
    common = dict(batch_size=batch_size, padding_side=padding_side, max_length=max_length, share_prefix=share_prefix,
                  trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    with timer.stage("base states"):
        base_states = model_states(base_src, prompts, label="base", **common)
    with timer.stage("sft states"):
        sft_states = model_states(sft_src, prompts, label="sft", **common)
    if base_states.shape != sft_states.shape:
        raise SurgeryError(
            f"The two models gave hidden states of different shapes ({base_states.shape[1:]} vs "
            f"{sft_states.shape[1:]}); they cannot be compared layer by layer."
        )
    with timer.stage("probes"):
        curves = layer_aurocs(base_states, sft_states, labels, train_idx, test_idx, c=c, seed=seed)
        curves.surface = surface_auroc(prompts, labels, train_idx, test_idx, c=c, seed=seed)
        v = verdict(curves)
    best = {}
    for kind in ("base", "sft", "transfer"):
        layer, auc = curves.best(kind)
        best[kind] = {"layer": layer, "auroc": auc,
                      "stderr": auroc_stderr(auc, curves.n_test_pos, curves.n_test_neg)}
    return {
        "sft": sft_src.identifier,
        "base": base_src.identifier,
        "architecture": arch,
        "benchmark": benchmark,
        "split": split,
        "items": {"total": len(items), "answerable": n_ans, "unanswerable": n_unans,
                  "train": curves.n_train, "test": curves.n_test,
                  "test_unanswerable": curves.n_test_pos, "test_answerable": curves.n_test_neg,
                  "near_duplicate_pairs": len(items) - len(set(groups))},
        "positive_class": "unanswerable",
        "layers": "1-based block outputs at the last prompt token",
        "seed": seed,
        "test_fraction": test_fraction,
        "probe": {"model": "StandardScaler + LogisticRegression (scikit-learn, L2)", "C": c},
        "auroc": {"base": curves.base, "sft": curves.sft, "transfer": curves.transfer, "surface": curves.surface},
        "best": best,
        "verdict": {"status": v.status, "line": v.line,
                    "thresholds": {"preserved": PRESERVED_AUROC, "separates": SEPARATES_AUROC}},
        "seconds": {k: round(s, 2) for k, s in timer.seconds.items()} | {"total": round(timer.total, 2)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _command_line(ctx: click.Context) -> str:
    """The invocation as a shell line (every option spelled out), stored next to the numbers it made."""
    words = ["surgery", "probe"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif param.is_flag:
            if value:
                words.append(param.opts[0])
        elif value is not None:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


@click.command("probe")
@click.argument("sft")
@click.option("--base", required=True, help="The model before fine-tuning (HF folder, cached hub id or adapter).")
@click.option("--benchmark", default="selfaware", show_default=True,
              help="Built-in benchmark name or a JSONL file of {question, answerable} items.")
@click.option("--limit", type=int, default=400, show_default=True,
              help="Items to use, balanced between answerable and unanswerable.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling, split and probes.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Benchmark data folder (default: $SURGERY_DATA_DIR, ../shared/data, bundled samples).")
@click.option("--split", type=click.Choice(["eval", "train", "all"]), default="eval", show_default=True,
              help="Benchmark split; 'eval' keeps items that alignment/SFT/calibration data never use.")
@click.option("--test-fraction", type=float, default=0.3, show_default=True,
              help="Share of the items held out to score the probes.")
@click.option("--probe-c", "c", type=float, default=1.0, show_default=True,
              help="Inverse L2 strength of the logistic regression.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--padding-side", type=click.Choice(["right", "left"]), default="right", show_default=True)
@click.option("--max-length", type=int, default=1024, show_default=True,
              help="Longer prompts keep their last tokens.")
@click.option("--no-shared-prefix", "no_shared_prefix", is_flag=True,
              help="Run every prompt whole instead of reusing the cache of the template prefix they share.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the record here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of the three AUROC curves here.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the model folders.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights; only for files you trust.")
def probe(sft, base, benchmark, limit, seed, data_dir, split, test_fraction, c, batch_size, padding_side,
          max_length, no_shared_prefix, json_path, plot_path, trust_remote_code, allow_pickle):
    """Does the fine-tuned model SFT still know what it doesn't know?

    Linear probes on the last-prompt-token hidden states of every layer separate unanswerable from
    answerable questions: trained and tested on BASE, on SFT, and trained on BASE then tested on SFT
    unchanged. If the base probe still works on SFT, recognition survived fine-tuning and only its
    expression was lost: the case an honesty patch is built for.
    """
    from .report import curves_from_record, format_table, plot_curves, write_json

    if batch_size < 1 or max_length < 1:
        raise SurgeryError("--batch-size and --max-length must be at least 1.")
    if c <= 0:
        raise SurgeryError(f"--probe-c must be positive (got {c}).")
    record = {"command": _command_line(click.get_current_context())}
    record |= run_probe(sft, base, benchmark=benchmark, limit=limit, seed=seed, data_dir=data_dir, split=split,
                       test_fraction=test_fraction, c=c, batch_size=batch_size, padding_side=padding_side,
                       max_length=max_length, share_prefix=not no_shared_prefix, trust_remote_code=trust_remote_code,
                       allow_pickle=allow_pickle)
    curves = curves_from_record(record)
    click.echo(format_table(curves))
    click.echo(f"time: {record['seconds']['total']:.1f} s")
    if json_path:
        write_json(record, json_path)
        click.echo(f"wrote {json_path}")
    if plot_path:
        plot_curves(curves, plot_path, title=f"{Path(str(sft)).name} vs {Path(str(base)).name} on {benchmark}")
        click.echo(f"wrote {plot_path}")
    click.echo(record["verdict"]["line"])
