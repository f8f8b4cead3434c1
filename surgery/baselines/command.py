"""``surgery bench``: HCNR against its baselines on one pair, side by side, in one run."""

from __future__ import annotations

from pathlib import Path

import click

#: what ``surgery bench`` runs when no --method is given (the matched-budget comparison)
DEFAULT_METHODS = (
    "base", "sft", "hcnr", "hcnr:hessian-hon", "hcnr:restore-only", "hcnr:random-s0", "hcnr:compact",
    "rait-lora:160", "rait-lora:480", "interp:0.5",
)


@click.command("bench")
@click.option("--base", required=True, help="The model before fine-tuning (folder or cached hub id).")
@click.option("--sft", required=True, help="The fine-tuned model (folder, cached hub id or PEFT adapter).")
@click.option("-m", "--method", "methods", multiple=True,
              help="KIND[:ARG], repeatable: base, sft, hcnr[:VARIANT|k=v,...], rait-lora:N, rait-lora:s=SECONDS, "
                   "rait-full:N, dpo:N, dpo-full:N, interp:ALPHA.  [default: " + ", ".join(DEFAULT_METHODS) + "]")
@click.option("-b", "--benchmark", "benchmarks", multiple=True, default=("selfaware",), show_default=True,
              help="Honesty benchmark name or user JSONL, repeatable.")
@click.option("--limit", type=int, default=300, show_default=True, help="Items per honesty benchmark (balanced).")
@click.option("-t", "--task-benchmark", "task_benchmarks", multiple=True, default=("qa_wikidata",),
              show_default=True, help="Task benchmark name or user JSONL (kind \"task\"), repeatable; 'none' for none.")
@click.option("--task-limit", type=int, default=120, show_default=True, help="Items per task benchmark.")
@click.option("--hon-data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="D_hon JSONL for HCNR [default: built from the data folder, probing the SFT model].")
@click.option("--task-data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="D_task JSONL for HCNR [default: built from the data folder].")
@click.option("--train-data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="RAIT/DPO prompt/response JSONL (IDK-relabelled) [default: built from the train split].")
@click.option("--probe", type=int, default=400, show_default=True,
              help="SelfAware train questions the SFT model is probed on to split known/unknown for RAIT.")
@click.option("--data-dir", default=None, help="Benchmark data folder (default: SURGERY_DATA_DIR or ../shared/data).")
@click.option("--reference", default="hcnr", show_default=True,
              help="Method every other one is compared with by a paired bootstrap.")
@click.option("--max-new-tokens", type=int, default=24, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True, help="Generation batch size.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option("--keep-models", is_flag=True, help="Keep every method's model folder (they are large).")
@click.option("--fresh", is_flag=True, help="Recompute methods whose results already exist in --out.")
@click.option("--report-only", is_flag=True, help="Only summarise the methods that already have results in --out.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for bench.json, bench.md, pareto.png, budget.png and per-method results.")
def bench(base, sft, methods, benchmarks, limit, task_benchmarks, task_limit, hon_data, task_data, train_data, probe,
          data_dir, reference, max_new_tokens, batch_size, seed, n_boot, keep_models, fresh, report_only,
          out_dir) -> None:
    """Compare HCNR with RAIT, DPO, restore-only, random neurons and interpolation on one pair.

    Every method gets the same inputs and the same held-out evaluation items and runs in its own
    process (its own time and peak memory). Writes a Markdown table, JSON and two plots to --out.
    """
    import torch

    from .bench import BenchConfig, run_bench
    from .report import markdown

    tasks = () if tuple(task_benchmarks) == ("none",) else tuple(task_benchmarks)
    cfg = BenchConfig(base=base, sft=sft, out_dir=out_dir, methods=tuple(methods) or DEFAULT_METHODS,
                      benchmarks=tuple(benchmarks), limit=limit, task_benchmarks=tasks, task_limit=task_limit,
                      hon_data=hon_data, task_data=task_data, train_data=train_data, probe=probe, data_dir=data_dir,
                      seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      threads=torch.get_num_threads(), n_boot=n_boot, reference=reference, keep_models=keep_models)
    summary = run_bench(cfg, fresh=fresh, run_missing=not report_only)
    click.echo(markdown(summary), nl=False)
    click.echo(f"\nwrote {out_dir / 'bench.json'}, bench.md, pareto.png, budget.png")
