"""`surgery patch` as a library call: calibration -> Fisher -> selection -> Hessians -> compensation -> file.

Each stage lives in its own module; this one only moves data between them, times them and writes
the patch plus ``<patch>.report.json``.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..atomic import write_json_atomic
from ..errors import SurgeryError
from ..linear_layers import LinearLayer, canonical, find_linear_layers
from ..modelio import ModelSource, load_model, load_tokenizer, locate, open_checkpoint
from ..patchfile import PatchEntry, make_entry, write_patch
from ..progress import StageTimer, peak_rss_mb, progress
from .calibration import dataset_fingerprint, make_batches, read_calibration_jsonl, sample_examples, tokenize_examples
from .compensation import restore_and_compensate
from .fisher import fisher_scores
from .hessian import collect_hessians
from .options import PatchOptions
from .selection import honesty_priority, random_share, relative_perturbation, select_units, top_share, unit_scores

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Selection:
    """Honesty-critical neurons per selected weight, plus what led there (for the report)."""

    neurons: dict[str, torch.Tensor]
    candidates: dict[str, torch.Tensor]
    unit_score: dict[str, float]
    kept_units: list[str]


def select_neurons(
    layers: list[LinearLayer],
    s_hon: dict[str, torch.Tensor],
    s_task: dict[str, torch.Tensor],
    base_ckpt,
    sft_ckpt,
    options: PatchOptions,
) -> Selection:
    """Stage 1a (intra-layer top R_IW by priority) and 1b (cross-layer top R_CW by perturbation)."""
    dim = 1 if options.neuron == "column" else 0
    gen = torch.Generator().manual_seed(options.seed)
    candidates: dict[str, torch.Tensor] = {}
    pert: dict[str, tuple[float, float]] = {}
    for layer in progress(layers, desc="selection", unit="matrix"):
        w0 = canonical(base_ckpt.get(layer.weight), layer)
        w1 = canonical(sft_ckpt.get(layer.weight), layer)
        n = w1.shape[dim]
        if options.selection == "random":
            idx = random_share(n, options.r_iw, gen)
        else:
            r = honesty_priority(s_hon[layer.weight], s_task[layer.weight], options.epsilon, options.fisher_normalize)
            idx = top_share(r, options.r_iw)
        candidates[layer.weight] = idx
        unit = layer.weight if options.layer_unit == "matrix" else layer.block
        num, den = relative_perturbation(w0, w1, idx, dim)
        a, b = pert.get(unit, (0.0, 0.0))
        pert[unit] = (a + num, b + den)
    kept = select_units(pert, options.r_cw)
    kept_set = set(kept)
    neurons = {
        l.weight: candidates[l.weight]
        for l in layers
        if (l.weight if options.layer_unit == "matrix" else l.block) in kept_set
    }
    return Selection(neurons, candidates, unit_scores(pert), kept)


def _hessian_batches(options: PatchOptions, hon, task):
    return {"hon": hon, "task": task, "both": hon + task}[options.hessian_data]


def make_patch(
    sft: str,
    base: str | None,
    honesty_data: str | Path,
    task_data: str | Path,
    out: str | Path,
    options: PatchOptions = PatchOptions(),
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device: str = "auto",
) -> dict:
    """Compute an HCNR patch for ``sft`` against ``base``; writes ``out`` and ``out.report.json``."""
    out = Path(out)
    timer = StageTimer()
    dev = pick_device(device)
    torch.manual_seed(options.seed)

    with timer.stage("load"):
        sft_src = locate(sft, base)
        base_src = _resolve_base(sft_src, base)
        tokenizer = load_tokenizer(sft_src, trust_remote_code=trust_remote_code)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        sets = {}
        for key, path in (("hon", honesty_data), ("task", task_data)):
            examples = sample_examples(read_calibration_jsonl(path), options.max_samples, options.seed)
            encoded = tokenize_examples(tokenizer, examples, options.max_length)
            sets[key] = make_batches(encoded, options.batch_size, pad)
        fisher_src = sft_src if options.fisher_at == "sft" else base_src
        model = load_model(fisher_src, dtype=torch.float32, trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle).to(dev)
        layers = find_linear_layers(model)
        if not layers:
            raise SurgeryError(f"No linear layers inside numbered blocks were found in {sft}.")

    s_hon = s_task = {}
    if options.selection == "fisher":
        with timer.stage("fisher"):
            hon_scores = fisher_scores(model, layers, sets["hon"], desc="fisher (honesty)")
            task_scores = fisher_scores(model, layers, sets["task"], desc="fisher (task)")
            pick = "columns" if options.neuron == "column" else "rows"
            s_hon, s_task = getattr(hon_scores, pick), getattr(task_scores, pick)

    with timer.stage("selection"):
        base_ckpt = open_checkpoint(base_src, allow_pickle=allow_pickle)
        sft_ckpt = open_checkpoint(sft_src, allow_pickle=allow_pickle)
        _check_same_tensors(layers, base_ckpt, sft_ckpt)
        selection = select_neurons(layers, s_hon, s_task, base_ckpt, sft_ckpt, options)
        chosen = [l for l in layers if l.weight in selection.neurons]
        if not chosen:
            raise SurgeryError("SFT did not change any linear weight of the base model: there is nothing to patch.")

    hessians = task_hessians = None
    compensate = options.compensation != "none" and options.neuron == "column"
    if compensate:
        with timer.stage("hessians"):
            if fisher_src is not sft_src:
                del model
                gc.collect()
                model = load_model(sft_src, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                   allow_pickle=allow_pickle).to(dev)
            if options.compensation == "protect":
                hessians = collect_hessians(model, chosen, sets["hon"], desc="hessians (honesty)")
                task_hessians = collect_hessians(model, chosen, sets["task"], desc="hessians (task)")
            else:
                hessians = collect_hessians(model, chosen, _hessian_batches(options, sets["hon"], sets["task"]))
    del model
    gc.collect()

    entries: list[PatchEntry] = []
    per_matrix: dict[str, dict] = {}
    fallbacks: list[str] = []
    with timer.stage("compensation"):
        for layer in progress(chosen, desc="compensation", unit="matrix"):
            idx = selection.neurons[layer.weight]
            stored_sft = sft_ckpt.get(layer.weight)
            w0 = canonical(base_ckpt.get(layer.weight), layer)
            w1 = canonical(stored_sft, layer)
            if options.neuron == "column":
                h = hessians.by_layer[layer.weight] if hessians is not None else None
                h_task = task_hessians.by_layer[layer.weight] if task_hessians is not None else None
                res = restore_and_compensate(w0, w1, h, idx, options.compensation if compensate else "none",
                                             options.damp, h_task, options.task_weight)
                new, method = res.weight, res.method
                info = {"drift_sft": _finite(res.drift_sft), "drift_restored": _finite(res.drift_restored),
                        "drift_patched": _finite(res.drift_patched), "damp": res.damp_used}
                if method == "fallback-none":
                    fallbacks.append(layer.weight)
            else:  # rows: each output row's objective decouples, so restoring it is already optimal
                new = w1.clone()
                new[idx, :] = w0[idx, :].to(w1.dtype)
                method, info = "rows-restore", {}
            entries.append(make_entry(layer.weight, stored_sft, new, idx,
                                      "cols" if options.neuron == "column" else "rows", layer.transposed))
            count = int(idx.numel()) * (layer.out_features if options.neuron == "column" else layer.in_features)
            per_matrix[layer.weight] = {"neurons": int(idx.numel()), "parameters": count, "method": method, **info}

    with timer.stage("write"):
        linear_params = sum(l.numel for l in layers)
        total_params = sum(_numel(sft_ckpt.shape(k)) for k in sft_ckpt.keys())
        changed = sum(m["parameters"] for m in per_matrix.values())
        stats = {
            "parameters_changed": changed,
            "share_of_linear": changed / linear_params,
            "share_of_model": changed / total_params,
            "linear_parameters": linear_params,
            "model_parameters": total_params,
            "matrices_total": len(layers),
            "matrices_touched": len(chosen),
            "fallbacks": fallbacks,
            "hessian_tokens": hessians.tokens if hessians else 0,
            "hessian_groups": len(hessians.groups) if hessians else 0,
            "residual_ratio": _residual_ratio(per_matrix),
            "per_matrix": per_matrix,
            "unit_scores": selection.unit_score,
        }
        manifest = {
            "tool": "surgery",
            "tool_version": __version__,
            "method": "HCNR",
            "base": base_src.identifier,
            "sft": sft_src.identifier,
            "options": options.to_dict(),
            "calibration": {"honesty": dataset_fingerprint(honesty_data), "task": dataset_fingerprint(task_data)},
            "stats": stats,
        }
        write_patch(out, entries, manifest)

    report = {
        "patch": str(out),
        "patch_bytes": out.stat().st_size,
        "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
        "seconds_total": round(timer.total, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "calibration_examples": {"honesty": sum(b.input_ids.shape[0] for b in sets["hon"]),
                                 "task": sum(b.input_ids.shape[0] for b in sets["task"])},
        **{k: v for k, v in stats.items() if k not in ("per_matrix", "unit_scores")},
        "options": options.to_dict(),
    }
    _write_json(out.with_name(out.name + ".report.json"), report)
    if fallbacks:
        log.warning("%d matrices fell back to restore-only (Cholesky failed): %s", len(fallbacks), ", ".join(fallbacks))
    return report


def _resolve_base(sft_src: ModelSource, base: str | None) -> ModelSource:
    if base is not None:
        return locate(base)
    if sft_src.adapter_base is not None:
        return ModelSource(str(sft_src.adapter_base), sft_src.adapter_base)
    raise SurgeryError("No base model: pass --base (the model before fine-tuning).")


def _check_same_tensors(layers: list[LinearLayer], base_ckpt, sft_ckpt) -> None:
    for layer in layers:
        if layer.weight not in base_ckpt:
            raise SurgeryError(f"The base model has no tensor {layer.weight}: base and SFT differ in architecture.")
        if base_ckpt.shape(layer.weight) != sft_ckpt.shape(layer.weight):
            raise SurgeryError(f"{layer.weight} has different shapes in base and SFT: not the same architecture.")


def _residual_ratio(per_matrix: dict[str, dict]) -> float | None:
    """Σ patched output drift / Σ SFT output drift over touched matrices (calibration inputs)."""
    num = sum(m.get("drift_patched", 0.0) or 0.0 for m in per_matrix.values())
    den = sum(m.get("drift_sft", 0.0) or 0.0 for m in per_matrix.values())
    if not den:
        return None
    return num / den


def _finite(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _write_json(path: Path, data: dict) -> None:
    write_json_atomic(path, data, sort_keys=True)
