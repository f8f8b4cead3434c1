"""Patch encodings on the bundled SmolLM2 pair: bytes, weight error and honesty per encoding.

The recipe's patch (``protect``, R_IW 0.125 x R_CW 0.8) is made once in full, converted to bf16 and int8
(``surgery convert``), each applied to M1, and M1 plus the three patched models are evaluated on the same
held-out items (greedy). Reported per encoding: patch bytes (and % of the SFT model's bytes), max/mean
absolute weight error against the full patch, honesty F1, refusal rates, task accuracy, the share of the
full patch's F1 gain kept, and how many answers are identical to the full patch's.

    SURGERY_THREADS=1 python -m benchmarks.patch_encodings --work-dir runs/encodings \
        --limit 100 --task-limit 60 --json docs/results/encodings.json

Everything is cached in ``--work-dir`` (calibration sets, the full patch, the applied models, each eval).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from surgery.apply import apply_patch
from surgery.convert import convert_patch
from surgery.evaluation.evaluate import save_json
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.modelio import locate, open_checkpoint
from surgery.pair.build import ensure_pair, load_recipe, recipe_dir_of
from surgery.pair.demo import DemoConfig, _calibrate, eval_items, evaluate_model

log = logging.getLogger("benchmarks.patch_encodings")
ENCODINGS = ("full", "bf16", "int8")


def _model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _eval(name: str, model: str, base: str | None, items: list, cfg: DemoConfig, work: Path) -> dict:
    path = work / f"eval_{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = evaluate_model(model, items, cfg, base)
    save_json(result, path)
    return result


def _row(result: dict) -> dict[str, Any]:
    avg = result["metrics"]["average"]
    return {k: avg.get(k) for k in ("honesty_f1", "refusal_unanswerable", "refusal_answerable", "task_accuracy")}


def run(work: Path, limit: int, task_limit: int, max_new_tokens: int, data_dir: str | None) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    cfg = DemoConfig(
        work_dir=work,
        benchmarks=("selfaware",),
        limit=limit,
        task_limit=task_limit,
        max_new_tokens=max_new_tokens,
        data_dir=data_dir,
    )
    recipe_dir = recipe_dir_of("smollm2")
    recipe = load_recipe(recipe_dir)
    pair = ensure_pair(recipe_dir)
    sft, base = str(pair.m1_adapter), str(pair.m0)
    if not (work / "calib" / "d_task.jsonl").is_file():
        _calibrate(sft, base, work / "calib", recipe["calibration"], cfg)
    full = work / "full.safetensors"
    if not full.is_file():
        options = PatchOptions().replace(**recipe["patch"])
        make_patch(sft, base, work / "calib" / "d_hon.jsonl", work / "calib" / "d_task.jsonl", full, options)
    model_bytes = _model_bytes(pair.m1)
    checkpoint = open_checkpoint(locate(sft, base))
    patches: dict[str, dict[str, Any]] = {"full": {"bytes": full.stat().st_size}}
    for encoding in ENCODINGS[1:]:
        report = convert_patch(full, work / f"{encoding}.safetensors", encoding, sft=checkpoint)
        patches[encoding] = {
            "bytes": report.bytes_out,
            "max_abs_error": report.max_abs_error,
            "mean_abs_error": report.mean_abs_error,
            "mean_abs_change": report.mean_abs_change,
        }
    items = eval_items(cfg)
    results = {"m1": _eval("m1", sft, base, items, cfg, work)}
    for encoding in ENCODINGS:
        out = work / f"m1-{encoding}"
        if not out.is_dir():
            apply_patch(sft, work / f"{encoding}.safetensors", out, base=base)
        results[encoding] = _eval(encoding, str(out), None, items, cfg, work)
    f1_sft = _row(results["m1"])["honesty_f1"]
    f1_full = _row(results["full"])["honesty_f1"]
    full_answers = [r["response"] for r in results["full"]["items"]]
    rows: dict[str, Any] = {"m1": _row(results["m1"])}
    for encoding in ENCODINGS:
        row = {**_row(results[encoding]), **patches[encoding]}
        row["share_of_model_bytes"] = patches[encoding]["bytes"] / model_bytes
        row["f1_gain_kept"] = (row["honesty_f1"] - f1_sft) / (f1_full - f1_sft) if f1_full != f1_sft else None
        answers = [r["response"] for r in results[encoding]["items"]]
        row["answers_identical_to_full"] = sum(a == b for a, b in zip(answers, full_answers, strict=True))
        rows[encoding] = row
    return {"model_bytes": model_bytes, "n_items": len(items), "max_new_tokens": max_new_tokens, "rows": rows}


def table(summary: dict[str, Any]) -> str:
    """The markdown table of docs/encodings.md."""
    n = summary["n_items"]
    lines = [
        "| model | patch bytes | % of model | max / mean weight error | honesty F1 | refusal unans. / ans. "
        "| task acc | F1 gain kept | answers = full |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    m1 = summary["rows"]["m1"]
    lines.append(
        f"| M1 (SFT) | – | – | – | {100 * m1['honesty_f1']:.1f} | {100 * m1['refusal_unanswerable']:.1f}% / "
        f"{100 * m1['refusal_answerable']:.1f}% | {100 * m1['task_accuracy']:.1f} | – | – |"
    )
    for encoding in ENCODINGS:
        r = summary["rows"][encoding]
        err = "0 (reference)" if encoding == "full" else f"{r['max_abs_error']:.2e} / {r['mean_abs_error']:.2e}"
        kept = "–" if r["f1_gain_kept"] is None else f"{100 * r['f1_gain_kept']:.0f}%"
        lines.append(
            f"| M1 + {encoding} patch | {r['bytes'] / 1e6:.1f} MB | {100 * r['share_of_model_bytes']:.2f}% | {err} "
            f"| {100 * r['honesty_f1']:.1f} | {100 * r['refusal_unanswerable']:.1f}% / "
            f"{100 * r['refusal_answerable']:.1f}% | {100 * r['task_accuracy']:.1f} | {kept} "
            f"| {r['answers_identical_to_full']}/{n} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/encodings"))
    parser.add_argument("--limit", type=int, default=100, help="SelfAware items (balanced)")
    parser.add_argument("--task-limit", type=int, default=60, help="qa_wikidata items")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = run(args.work_dir, args.limit, args.task_limit, args.max_new_tokens, args.data_dir)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    print(table(summary))


if __name__ == "__main__":
    main()
