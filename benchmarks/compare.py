"""HCNR against its baselines on the bundled SmolLM2 pair (M0 honest base, M1 SFT), on this machine.

    PYTHONPATH=. python benchmarks/compare.py --tier core --out .cache/bench/compare-smollm2
    PYTHONPATH=. python benchmarks/compare.py --tier core --tier ablations --tier budgets --out ...

Tiers share one output folder and every method's result is reused by a later run with the same
inputs, so tiers can be added one after the other (list every tier the table should cover):

- ``core``: base, SFT, HCNR defaults, HCNR with honesty-only Hessians, restore-only, random columns
  with compensation (3 seeds), the compact patch, LoRA-RAIT at 160 and 480 examples, interpolation;
- ``ablations``: Fisher at the base, task-only Hessians, summed compensation, output rows, random
  restore-only, the R_IW × R_CW grid;
- ``budgets``: LoRA-RAIT at HCNR's own data (256) and wall time, HCNR at 32/64 calibration examples,
  more interpolation weights, DPO and full-fine-tune RAIT at 480;
- ``recipe``: the SmolLM2 recipe's patch (``compensation=protect,r_iw=0.125,r_cw=0.8``) and the same
  compensation at METHOD.md's size (0.5 x 0.4) against the pair, HCNR's defaults, restore-only, random
  columns (3 seeds), the compact patch, interpolation, LoRA-RAIT at HCNR's data (256) and wall time
  (200 s) and at 64/160/480 examples, and DPO at 480 (the README's table);
- ``paper``: LoRA-RAIT at the paper's 5000 examples (about half an hour on 2 cores);
- ``grid``: ``protect`` compensation over patch shapes (R_IW x R_CW from 1 x 0.1 to 1 x 1, the large
  patch with a heavier task weight) and the recipe's shape with random columns and with other
  64-example calibration subsets (how the recipe's 0.125 x 0.8 was found, and how robust it is);
- ``full``: full-fine-tune RAIT and DPO at 480 examples (the LoRA runs' full-weight counterparts).

Evaluation: SelfAware held-out items (``--limit``, balanced) and the qa_wikidata task (``--task-limit``).
The result is ``bench.md`` (the efficiency table), ``bench.json``, ``pareto.png`` and ``budget.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def recipe_patch_spec(recipe: str = "smollm2") -> str:
    """The bundled recipe's patch as a method spec (``hcnr:k=v,...``), so the table follows recipe.json."""
    patch = json.loads((ROOT / "recipes" / recipe / "recipe.json").read_text(encoding="utf-8"))["patch"]
    return "hcnr:" + ",".join(f"{k}={v}" for k, v in patch.items())


RECIPE_PATCH = recipe_patch_spec()

TIERS: dict[str, tuple[str, ...]] = {
    # in order of what matters most, so a run cut short has the key rows first
    "core": ("base", "sft", "hcnr", "rait-lora:160", "rait-lora:480", "hcnr:hessian-hon", "hcnr:restore-only",
             "hcnr:random-s0", "interp:0.5", "hcnr:random-s1", "hcnr:random-s2", "hcnr:compact"),
    "ablations": ("hcnr:fisher-at-base", "hcnr:hessian-task", "hcnr:compensation-summed", "hcnr:neuron-row",
                  "hcnr:random-restore-only", "hcnr:size-0.25x0.2", "hcnr:size-0.5x0.2", "hcnr:size-0.75x0.4",
                  "hcnr:size-0.5x0.6", "hcnr:hessian_data=hon,r_iw=0.25"),
    "budgets": ("rait-lora:256", "hcnr:max_samples=32", "hcnr:max_samples=64", "interp:0.25", "interp:0.75",
                "dpo:480", "rait-full:480"),
    "paper": ("rait-lora:5000",),
    "grid": ("hcnr:compensation=protect,r_iw=0.5,r_cw=0.2", "hcnr:compensation=protect,r_iw=0.125,r_cw=0.8",
             "hcnr:compensation=protect,r_iw=1,r_cw=0.1", "hcnr:compensation=protect,r_iw=0.75,r_cw=0.6,task_weight=2",
             "hcnr:compensation=protect,r_iw=1,r_cw=1", "hcnr:compensation=protect,r_iw=0.1,r_cw=1",
             "hcnr:compensation=protect,r_iw=0.2,r_cw=1", "hcnr:compensation=protect,r_iw=0.05,r_cw=1",
             "hcnr:compensation=protect,r_iw=0.25,r_cw=0.8",
             "hcnr:compensation=protect,r_iw=0.125,r_cw=0.8,selection=random",
             "hcnr:compensation=protect,r_iw=0.125,r_cw=0.8,max_samples=64",
             "hcnr:compensation=protect,r_iw=0.125,r_cw=0.8,max_samples=64,seed=1"),
    "full": ("rait-full:480", "dpo-full:480"),
    # the SmolLM2 recipe's patch (protect at 0.125 x 0.8) against the pair, HCNR's defaults, its controls
    # (restore-only, random columns x3, compact, interpolation) and re-tuning at matched data and time
    "recipe": ("base", "sft", RECIPE_PATCH, "hcnr:compensation=protect",
               "rait-lora:160", "hcnr", "hcnr:restore-only",
               "hcnr:selection=random,seed=0,compensation=protect", "rait-lora:480", "interp:0.25", "dpo:480",
               "hcnr:compensation=protect,r_iw=0.25,r_cw=0.4", "rait-lora:256", "rait-lora:s=200",
               "hcnr:selection=random,seed=1,compensation=protect", "hcnr:selection=random,seed=2,compensation=protect",
               "interp:0.5", "hcnr:compensation=protect,task_weight=0.5", "hcnr:compensation=protect,r_iw=0.75,r_cw=0.6",
               "hcnr:hessian-hon", "hcnr:random-s0", "hcnr:compensation=protect,max_samples=32", "rait-lora:64",
               "interp:0.9", "interp:0.75"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tier", action="append", choices=sorted(TIERS),
                    help="method tiers to run (default: core, unless --method is given)")
    ap.add_argument("--method", action="append", default=[], help="extra method specs (surgery bench syntax)")
    ap.add_argument("--out", type=Path, default=Path(".cache/bench/compare-smollm2"))
    ap.add_argument("--limit", type=int, default=300, help="SelfAware items (half answerable)")
    ap.add_argument("--task-limit", type=int, default=120, help="qa_wikidata items")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="greedy tokens per answer (and per probe)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe", type=int, default=200, help="SelfAware train questions probed for RAIT known/unknown")
    ap.add_argument("--calib-probe", type=int, default=192, help="SelfAware calibration questions probed for D_hon")
    ap.add_argument("--reference", default=RECIPE_PATCH,
                    help=f"the method every paired difference is taken against (default: the SmolLM2 recipe's "
                         f"patch, {RECIPE_PATCH})")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="summarise finished methods, run nothing new")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "torch", "urllib3", "huggingface_hub", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    from surgery.baselines.bench import BenchConfig, run_bench
    from surgery.baselines.report import markdown
    from surgery.pair.build import ensure_pair

    pair = ensure_pair()
    methods: list[str] = []
    for tier in args.tier or ([] if args.method else ["core"]):
        methods += [m for m in TIERS[tier] if m not in methods]
    methods += [m for m in args.method if m not in methods]
    cfg = BenchConfig(base=str(pair.m0), sft=str(pair.m1), out_dir=args.out, methods=methods,
                      benchmarks=("selfaware",), limit=args.limit, task_benchmarks=("qa_wikidata",),
                      task_limit=args.task_limit, data_dir=args.data_dir, threads=args.threads, probe=args.probe,
                      calib_probe=args.calib_probe,
                      reference=args.reference, keep_models=args.keep_models, max_new_tokens=args.max_new_tokens,
                      extra={"pair": {"base": str(pair.m0), "sft": str(pair.m1)}, "argv": sys.argv})
    from surgery.errors import SurgeryError

    try:
        summary = run_bench(cfg, run_missing=not args.report_only)
    except SurgeryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
