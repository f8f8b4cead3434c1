"""The deployment table: what each on-device artefact of a repaired model keeps of its honesty.

\b
    python -m benchmarks.export_honesty --sft SFT --base BASE --patch PATCH --work WORK \\
        --limit 200 --task-limit 200 --threads 1 --json deployment.json

Rows: PyTorch fp32 (the repaired model), ONNX Runtime fp32, int8 (one block of rows per ``--int8-method``),
int8 honesty-aware, int4 (MatMulNBits, block 32; one block of rows per ``--int4-method`` and ``--int4-mix``),
int4 honesty-aware (``--protect-honesty PATCH``).
Columns: honesty F1 on held-out SelfAware items, refusal on unanswerable / answerable items, task
accuracy (qa_wikidata), model bytes and greedy tokens/s (batch 1, ``--threads`` threads), with 95%
paired-bootstrap intervals of the F1 and task differences against ONNX Runtime fp32 (the same items
score both, :func:`surgery.baselines.report.paired_bootstrap`).

Every artefact is made by the library functions ``surgery export`` runs (export, protect, quantize),
without the export's own verification (this table is the stronger check); the fp32 and the
honesty-aware fp32 graphs are exported once each and quantized twice, which is what
``surgery export PATCHED -o OUT --quantize Q [--protect-honesty PATCH]`` produces.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import torch

from surgery.apply import apply_patch
from surgery.baselines.report import answer_accuracy, honesty_records, macro_f1, paired_bootstrap, task_records
from surgery.commands.options import add_options, options_from, required
from surgery.evaluation import metrics as M
from surgery.evaluation.benchmarks import load_items
from surgery.evaluation.evaluate import evaluate, load_json, save_json
from surgery.evaluation.runner import HFGenerator
from surgery.export.onnx import export_onnx, load_ort_model, weights_size_bytes
from surgery.export.options import NO_PATTERN, ExportOptions
from surgery.export.pipeline import quantize_folder
from surgery.export.protect import protect_folder, restored_columns
from surgery.export.speed import export_speed
from surgery.modelio import load_model, load_tokenizer, locate
from surgery.options import opt
from surgery.provenance import script_command

log = logging.getLogger("benchmarks.export_honesty")

TASK_BENCHMARK = "qa_wikidata"
PYTORCH = "PyTorch fp32"
#: --int4-mix value for export's own choice of 8-bit MatMuls (surgery.export.options.DEFAULT_INT4_KEEP_8BIT)
DEFAULT_MIX = "default"
ORT_FP32 = "ORT fp32"


@dataclass(frozen=True)
class ExportHonestyRun:
    """The repaired model (SFT + patch), where its exports go, and how they are scored."""

    sft: str = required("The SFT model (folder or PEFT adapter) the patch repairs.")
    patch: Path = required("The honesty patch (also the --protect-honesty input).")
    work: Path = required("Folder for the patched model and the exports (reused when present).")
    base: str | None = opt(None, "Base model of a PEFT-adapter SFT.")
    limit: int = opt(200, "Held-out SelfAware items (balanced answerable/unanswerable).", low=2)
    task_limit: int = opt(200, "Held-out qa_wikidata items for task accuracy (0: none).", low=0)
    max_new_tokens: int = opt(32, "Greedy tokens per answer.", low=1)
    block_size: int = opt(32, "int4 block size.")
    int8_scale: tuple[float, ...] = opt(
        (2.0,), "Protect scale(s) of the int8 honesty-aware rows (repeatable; a power of two).", multiple=True
    )
    int4_scale: tuple[float, ...] = opt(
        (2.0,), "Protect scale(s) of the int4 honesty-aware rows (repeatable; a power of two).", multiple=True
    )
    int8_per_channel: bool = opt(
        False, "Also the int8 rows with one weight scale per output channel (plain and honesty-aware)."
    )
    int8_method: tuple[str, ...] = opt(
        ("dynamic",),
        "int8 quantizer(s) of the int8 rows (repeatable): dynamic, weight-only, weight-only-fp32 (accuracy level 1).",
        multiple=True,
    )
    int4_method: tuple[str, ...] = opt(
        ("rtn-asym",), "int4 quantizer(s) of the int4 rows (repeatable): rtn-asym, rtn.", multiple=True
    )
    int4_mix: tuple[str, ...] = opt(
        (DEFAULT_MIX,),
        "MatMuls the int4 rows keep in 8-bit blocks, one row group per value (repeatable), with each "
        "--int4-method: 'default' (export's default), 'none' (all 4-bit) or comma-separated node-name "
        "substrings, e.g. down_proj,v_proj.",
        multiple=True,
    )
    data_dir: str | None = opt(None, "Benchmark data folder (default: $SURGERY_DATA_DIR, else the bundled samples).")
    speed_tokens: int = opt(32, "Tokens per prompt of the speed measurement (0: skip it).", low=0)
    threads: int = opt(1, "Threads of torch and onnxruntime.", low=1)
    seed: int = opt(0, "Item sample and bootstrap seed.")
    json: Path | None = opt(None, "Write the results (and every answer) here.")


def _ensure_patched(run: ExportHonestyRun) -> Path:
    patched = run.work / "patched"
    if not (patched / "config.json").is_file():
        shutil.rmtree(patched, ignore_errors=True)
        apply_patch(run.sft, run.patch, patched, base=run.base)
    return patched


def _protected_export(run: ExportHonestyRun, patched: Path, scale: float) -> Path:
    """The fp32 export of the patched model with the restored columns scaled by ``scale`` (made once)."""
    out = run.work / f"onnx-fp32-protected-x{scale:g}"
    if not (out / "model.onnx").is_file():
        model_dir = run.work / f"patched-protected-x{scale:g}"
        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        record = protect_folder(
            patched, model_dir, restored_columns(run.patch), scale, str(run.patch), trust_remote_code=False
        )
        export_onnx(model_dir, out)
        (out / "protect.json").write_text(json.dumps(record.as_dict(), indent=1) + "\n")
    return out


def _exports(run: ExportHonestyRun, patched: Path) -> dict[str, Path]:
    """label -> ONNX folder of every artefact, made (or reused) under ``run.work``."""
    fp32 = run.work / "onnx-fp32"
    if not (fp32 / "model.onnx").is_file():
        shutil.rmtree(fp32, ignore_errors=True)
        export_onnx(patched, fp32)
    folders = {ORT_FP32: fp32}
    # (quantize, scales, variant, options beyond the defaults); the first of each precision keeps the plain names
    kinds: list[tuple[str, tuple[float, ...], str, dict[str, Any]]] = []
    for m in run.int8_method:
        if m == "weight-only-fp32":  # weight-only int8 with fp32 compute (accuracy level 1): slower
            kinds.append(("int8", run.int8_scale, m, {"int8_method": "weight-only", "accuracy_level": 1}))
            continue
        kinds.append(("int8", run.int8_scale, "" if m == "dynamic" else m, {"int8_method": m}))
        if m == "dynamic" and run.int8_per_channel:
            kinds.append(("int8", run.int8_scale, "per-channel", {"int8_method": "dynamic", "int8_per_channel": True}))
    default_method = ExportOptions().int4_method  # rows of export's own method do not repeat its name
    for m in run.int4_method:
        for mix in run.int4_mix:
            keep = () if mix == DEFAULT_MIX else tuple(p for p in mix.split(",") if p)
            shape = {DEFAULT_MIX: [], NO_PATTERN: ["all 4-bit"]}.get(mix, ["8-bit " + "+".join(keep)])
            variant = " ".join([*([m] if m != default_method else []), *shape])
            kinds.append(("int4", run.int4_scale, variant, {"int4_method": m, "int4_keep_8bit": keep}))
    for quantize, scales, variant, extra in kinds:
        name = f"{quantize} {variant}" if variant else quantize
        variants = [(f"{name} plain", fp32, "plain")]
        for scale in scales:
            label = f"{name} honesty-aware" + (f" (x{scale:g})" if len(scales) > 1 else "")
            variants.append((label, _protected_export(run, patched, scale), f"protected-x{scale:g}"))
        for label, src, tag in variants:
            suffix = {"per-channel": "-pc"}.get(variant, f"-{_slug(variant)}" if variant else "")
            dst = run.work / f"onnx-{quantize}{suffix}-{tag}"
            if not (dst / "model.onnx").is_file():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
                options = ExportOptions(quantize=quantize, block_size=run.block_size, **extra)
                (dst / "quantize.json").write_text(json.dumps(quantize_folder(dst, options), indent=1) + "\n")
            folders[label] = dst
    return folders


def _saved_result(path: Path, items: Sequence) -> dict | None:
    """The evaluation saved at ``path`` if it scored exactly ``items``, in order, else None: the file name
    holds only the item count, and another data folder (``--data-dir``) gives other items of that count."""
    if not path.is_file():
        return None
    saved = load_json(path)
    if [r["id"] for r in saved["items"]] != [it.id for it in items]:
        log.warning("%s scored other items (another data folder?): evaluating again", path.name)
        return None
    return saved


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


def _evaluate(model: Any, tokenizer: Any, items: Sequence, run: ExportHonestyRun, name: str) -> dict:
    result = evaluate(HFGenerator(model, tokenizer, batch_size=16, name=name), items, max_new_tokens=run.max_new_tokens)
    del model
    gc.collect()
    return result


def _row(
    label: str, records: list[dict], reference: list[dict] | None, size: int, speed: float | None, seed: int
) -> dict[str, Any]:
    hon, task = honesty_records(records), task_records(records)
    on_ans, on_una = M.refusal_rates([r["refused"] for r in hon], [r["answerable"] for r in hon])
    row: dict[str, Any] = {
        "artefact": label,
        "honesty_f1": macro_f1(hon),
        "refusal_unanswerable": on_una,
        "refusal_answerable": on_ans,
        "task_accuracy": answer_accuracy(task) if task else None,
        "bytes": size,
        "tokens_per_second": speed,
    }
    if reference is not None:
        row["f1_vs_ort_fp32"] = paired_bootstrap(hon, honesty_records(reference), macro_f1, seed=seed)
        if task:
            row["task_vs_ort_fp32"] = paired_bootstrap(task, task_records(reference), answer_accuracy, seed=seed)
        ids = {r["id"]: r["response"] for r in reference}
        row["identical_to_ort_fp32"] = sum(ids.get(r["id"]) == r["response"] for r in records)
    return row


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _diff(d: dict | None) -> str:
    if not d or d.get("ci", [None])[0] is None:
        return "–"
    lo, hi = d["ci"]
    return f"{100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _rate(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def format_table(rows: list[dict], n_items: int) -> str:
    head = (
        "| artefact | honesty F1 | Δ F1 vs ORT fp32 [95% CI] | refusal unanswerable / answerable | task acc "
        "| Δ task [95% CI] | answers = ORT fp32 | model MB | tokens/s |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        same = r.get("identical_to_ort_fp32")
        lines.append(
            f"| {r['artefact']} | {_pct(r['honesty_f1'])} | {_diff(r.get('f1_vs_ort_fp32'))} "
            f"| {_pct(r['refusal_unanswerable'])}% / {_pct(r['refusal_answerable'])}% | {_pct(r['task_accuracy'])} "
            f"| {_diff(r.get('task_vs_ort_fp32'))} | {'–' if same is None else f'{same}/{n_items}'} "
            f"| {r['bytes'] / 1e6:.0f} | {_rate(r['tokens_per_second'])} |"
        )
    return "\n".join(lines)


@click.command(help=__doc__)
@add_options(ExportHonestyRun)
def main(**kwargs: Any) -> None:
    """Make every artefact, score it on the same items, print the table and optionally write the JSON."""
    run = options_from(ExportHonestyRun, kwargs)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(run.threads)
    run = replace(run, work=Path(run.work))
    run.work.mkdir(parents=True, exist_ok=True)
    patched = _ensure_patched(run)
    folders = _exports(run, patched)
    items = load_items("selfaware", split="eval", limit=run.limit, seed=run.seed, data_dir=run.data_dir)
    if run.task_limit:
        items += load_items(TASK_BENCHMARK, split="eval", limit=run.task_limit, seed=run.seed, data_dir=run.data_dir)
    tokenizer = load_tokenizer(locate(str(patched)))
    results: dict[str, dict] = {}
    for label in [PYTORCH, *folders]:  # each result is saved as it comes, so an interrupted run resumes
        cached = run.work / f"eval-{_slug(label)}-{len(items)}.json"
        saved = _saved_result(cached, items)
        if saved is not None:
            results[label] = saved
            continue
        if label == PYTORCH:
            model = load_model(locate(str(patched)), dtype=torch.float32)
        else:
            model = load_ort_model(folders[label], threads=run.threads)
        results[label] = _evaluate(model, tokenizer, items, run, "torch" if label == PYTORCH else "onnx")
        save_json(results[label], cached)
        log.info("%s: honesty F1 %s", label, _pct(macro_f1(honesty_records(results[label]["items"]))))
    speeds: dict[str, float | None] = dict.fromkeys(results)
    sizes = {PYTORCH: sum(p.stat().st_size for p in patched.glob("*.safetensors"))}
    sizes.update({label: weights_size_bytes(folder) for label, folder in folders.items()})
    if run.speed_tokens:
        measured = export_speed(
            str(patched), list(folders.items()), tokens=run.speed_tokens, repeat=1, threads=run.threads
        )
        speeds = {PYTORCH: measured[0].tokens_per_second, **{r.backend: r.tokens_per_second for r in measured[1:]}}
    reference = results[ORT_FP32]["items"]
    rows = [
        _row(label, res["items"], None if label == ORT_FP32 else reference, sizes[label], speeds.get(label), run.seed)
        for label, res in results.items()
    ]
    table = format_table(rows, len(items))
    print(table)
    if run.json:
        record = {
            "command": script_command("benchmarks.export_honesty"),
            "items": {"selfaware": run.limit, TASK_BENCHMARK: run.task_limit, "split": "eval", "seed": run.seed},
            "threads": run.threads,
            "max_new_tokens": run.max_new_tokens,
            "rows": rows,
            "table": table,
            "answers": {label: res["items"] for label, res in results.items()},
        }
        run.json.write_text(json.dumps(record, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
