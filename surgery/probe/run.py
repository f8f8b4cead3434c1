"""The probe as a library call: items, both models' hidden states, layer-wise probes, the verdict.

``surgery probe`` (:mod:`surgery.commands.probe`) parses options and prints; everything else is here.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import numpy as np

from ..architecture import SAME_LAYERS, require_same_architecture
from ..devices import DeviceOptions, Placement, resolve
from ..errors import ArchitectureMismatch, CalibrationDataError, OptionError
from ..evaluation.benchmarks import Item, load_items
from ..modelio import ModelSource, load_model, load_tokenizer, locate
from ..progress import StageTimer, peak_rss_mb
from .hidden_states import prompt_states
from .probes import (
    MIN_PER_CLASS,
    PRESERVED_AUROC,
    SEPARATES_AUROC,
    ProbeCurves,
    auroc_stderr,
    layer_aurocs,
    near_duplicate_groups,
    stratified_split,
    surface_auroc,
    verdict,
)

log = logging.getLogger(__name__)


def model_states(
    source: ModelSource,
    prompts: list[str],
    *,
    label: str,
    batch_size: int,
    padding_side: str,
    max_length: int,
    share_prefix: bool,
    trust_remote_code: bool,
    allow_pickle: bool,
    placement: Placement | None = None,
) -> np.ndarray:
    """Load one model, take its last-prompt-token states, and free it before the next model loads.

    The model is loaded in ``placement``'s dtype (float32 on the CPU when None) and moved to its device.
    """
    placement = placement or resolve(DeviceOptions(device="cpu"))
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    model = load_model(source, dtype=placement.dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if placement.device.type != "cpu":
        model = model.to(placement.device)
    try:
        return prompt_states(
            model,
            tokenizer,
            prompts,
            batch_size=batch_size,
            padding_side=padding_side,
            max_length=max_length,
            share_prefix=share_prefix,
            desc=f"{label} hidden states",
        )
    finally:
        del model
        gc.collect()
        if placement.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()  # the next model gets the memory back


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
    device: str = "auto",
    dtype: str = "float32",
) -> dict:
    """The whole probe as a library call; returns the record that ``--json`` writes.

    ``device``/``dtype`` are ``--device``/``--dtype`` (:mod:`surgery.devices`): both models run there,
    in batches of ``batch_size``; the states are taken back to the host as float32 either way.
    """
    _check_settings(test_fraction=test_fraction, c=c, batch_size=batch_size, max_length=max_length)
    placement = resolve(DeviceOptions(device=device, dtype=dtype))
    timer = StageTimer()
    with timer.stage("items"):
        items, n_ans, n_unans = probe_items(benchmark, data_dir=data_dir, split=split, limit=limit, seed=seed)
        sft_src = locate(sft, base_hint=base)
        base_src = locate(base)
        arch = require_same_architecture(
            base_src,
            sft_src,
            fields=SAME_LAYERS,
            why="The probe compares the same layers of both, so the fine-tuned model must be a fine-tune of the base.",
        ).summary()
        labels = np.array([0 if it.answerable else 1 for it in items])
        prompts = [it.question for it in items]
        groups = near_duplicate_groups(prompts)
        train_idx, test_idx = stratified_split([it.id for it in items], labels, test_fraction, seed, groups)
    common = dict(
        batch_size=batch_size,
        padding_side=padding_side,
        max_length=max_length,
        share_prefix=share_prefix,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        placement=placement,
    )
    base_states, sft_states = both_states(base_src, sft_src, prompts, timer, **common)
    with timer.stage("probes"):
        curves = layer_aurocs(base_states, sft_states, labels, train_idx, test_idx, c=c, seed=seed)
        curves.surface = surface_auroc(prompts, labels, train_idx, test_idx, c=c, seed=seed)
        v = verdict(curves)
    return {
        "sft": sft_src.identifier,
        "base": base_src.identifier,
        "architecture": arch,
        "benchmark": benchmark,
        "split": split,
        "items": {
            "total": len(items),
            "answerable": n_ans,
            "unanswerable": n_unans,
            "train": curves.n_train,
            "test": curves.n_test,
            "test_unanswerable": curves.n_test_pos,
            "test_answerable": curves.n_test_neg,
            "near_duplicate_pairs": len(items) - len(set(groups)),
        },
        "positive_class": "unanswerable",
        "layers": "1-based block outputs at the last prompt token",
        "seed": seed,
        "test_fraction": test_fraction,
        "probe": {"model": "StandardScaler + LogisticRegression (scikit-learn, L2)", "C": c},
        "auroc": {"base": curves.base, "sft": curves.sft, "transfer": curves.transfer, "surface": curves.surface},
        "best": best_layers(curves),
        "verdict": {
            "status": v.status,
            "line": v.line,
            "thresholds": {"preserved": PRESERVED_AUROC, "separates": SEPARATES_AUROC},
        },
        "precision": placement.record(),
        "seconds": {k: round(s, 2) for k, s in timer.seconds.items()} | {"total": round(timer.total, 2)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def both_states(
    base: ModelSource, sft: ModelSource, prompts: list[str], timer: StageTimer, **common: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Both models' states on the same prompts, one model in memory at a time; shapes must agree."""
    with timer.stage("base states"):
        base_states = model_states(base, prompts, label="base", **common)
    with timer.stage("sft states"):
        sft_states = model_states(sft, prompts, label="sft", **common)
    if base_states.shape != sft_states.shape:
        raise ArchitectureMismatch(
            f"The two models gave hidden states of different shapes ({base_states.shape[1:]} vs "
            f"{sft_states.shape[1:]}); they cannot be compared layer by layer."
        )
    return base_states, sft_states


def _check_settings(*, test_fraction: float, c: float, batch_size: int, max_length: int) -> None:
    """Reject settings the probe cannot run with before any model is loaded."""
    if batch_size < 1 or max_length < 1:
        raise OptionError("--batch-size and --max-length must be at least 1.")
    if c <= 0:
        raise OptionError(f"--probe-c must be positive (got {c}).")
    if not 0.0 < test_fraction < 1.0:
        raise OptionError(f"--test-fraction must be between 0 and 1 (got {test_fraction}).")


def probe_items(
    benchmark: str, *, data_dir: str | None, split: str, limit: int | None, seed: int
) -> tuple[list[Item], int, int]:
    """The items and how many are answerable / unanswerable; too few of either class is an error."""
    items = load_items(benchmark, data_dir=data_dir, split=split, limit=limit, seed=seed)
    n_unans = sum(not it.answerable for it in items)
    n_ans = len(items) - n_unans
    if min(n_ans, n_unans) < MIN_PER_CLASS:
        raise CalibrationDataError(
            f"The probe needs at least {MIN_PER_CLASS} answerable and {MIN_PER_CLASS} unanswerable items, "
            f"but '{benchmark}' (split {split}) gave {n_ans} answerable and {n_unans} unanswerable."
        )
    return items, n_ans, n_unans


def best_layers(curves: ProbeCurves) -> dict[str, dict]:
    """Per probe kind, the layer with the highest AUROC, its AUROC and that AUROC's standard error."""
    best = {}
    for kind in ("base", "sft", "transfer"):
        layer, auc = curves.best(kind)
        best[kind] = {"layer": layer, "auroc": auc, "stderr": auroc_stderr(auc, curves.n_test_pos, curves.n_test_neg)}
    return best
