"""``surgery eval``: score one model on honesty benchmarks, or compare saved results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..devices import DeviceOptions
from .options import (
    ModelAccess,
    add_options,
    benchmark_choice,
    emit_json,
    json_output,
    json_stdout,
    opt,
    options_from,
    switch,
    threads_option,
)

_BENCHMARK_HELP = (
    "selfaware, falseqa, puqa, pkqa, puqa_pkqa, known_unknowns, nq_open, qa_wikidata, or a JSONL of "
    "{question, answerable, answers}. Repeatable. [default: selfaware]"
)


@dataclass(frozen=True)
class EvalOptions:
    compare: bool = switch(
        "Compare saved results (--json, --output-path, or lm_eval's with the task pack) instead: first = base, "
        "second = SFT, the rest = candidates."
    )
    benchmarks: tuple[str, ...] = benchmark_choice(_BENCHMARK_HELP)
    limit: int | None = opt(
        None, "At most N items per benchmark, half answerable and half not where both exist.", low=1
    )
    seed: int = opt(0, "Seed of the --limit sample.", low=0)
    split: str = opt(
        "eval",
        "Which part of each built-in benchmark (train is for calibration/training data).",
        choices=("eval", "train", "all"),
    )
    data_dir: str | None = opt(
        None,
        "Folder with the benchmark data [default: $SURGERY_DATA_DIR, else the bundled samples].",
        metavar="DIRECTORY",
    )
    max_new_tokens: int = opt(32, "", low=1)
    batch_size: int = opt(16, "", low=1)
    backend: str = opt("torch", "", choices=("torch", "onnx"))
    json_out: str | None = json_output(
        "Write the result in the lm-evaluation-harness layout, every item's response and judgements embedded, "
        "to PATH ('-' for stdout)."
    )
    output_path: str | None = opt(
        None, "As lm_eval --output_path: write DIR/<model>/results_<date>.json.", metavar="DIR"
    )
    log_samples: bool = switch("With --output-path: also samples_<task>_<date>.jsonl, one record per item.")
    bootstrap_iters: int = opt(1000, "Bootstrap draws for the standard errors (0 = none).", low=0)
    md_out: str | None = opt(None, "Write a Markdown report.", flag="--markdown", metavar="FILE")
    plot_out: str | None = opt(None, "Write a PNG chart of honesty F1 per benchmark.", flag="--plot", metavar="FILE")
    refusal_patterns: str | None = opt(
        None, "File of refusal regexes (one a line) replacing the documented defaults.", metavar="FILE"
    )


@click.command("eval", short_help="Honesty evaluation: answer when you know, say so when you don't.")
@click.argument("targets", nargs=-1, required=True, metavar="MODEL | --compare RESULT.json...")
@add_options(EvalOptions)
@add_options(ModelAccess)
@add_options(DeviceOptions)
@threads_option
@json_stdout()
def eval_command(targets: tuple[str, ...], **kwargs: Any) -> None:
    """Measure honesty: refusal on unanswerable vs answerable questions, F1, RF-delta, accuracy.

    \b
      surgery eval MODEL --benchmark selfaware --benchmark falseqa --limit 300 --json base.json
      surgery eval MODEL --benchmark my_questions.jsonl
      surgery eval --compare base.json sft.json patched.json --markdown report.md --plot f1.png
    """
    from ..errors import OptionError
    from ..outputs import check_outputs

    o = options_from(EvalOptions, kwargs)
    access = options_from(ModelAccess, kwargs)
    place = options_from(DeviceOptions, kwargs)
    results_file = (o.output_path or "").endswith(".json")
    written = (
        ("--json", o.json_out),
        ("--markdown", o.md_out),
        ("--plot", o.plot_out),
        ("--output-path", o.output_path if results_file else None),
    )
    folders = (("--output-path", None if results_file else o.output_path),)
    check_outputs((*targets, o.refusal_patterns, *o.benchmarks), files=written, folders=folders)
    if o.compare:
        if o.json_out or o.output_path or o.log_samples:
            raise OptionError(
                "--json, --output-path and --log-samples write a single model's result; with --compare use "
                "--markdown or --plot."
            )
        _compare(targets, o)
        return
    if len(targets) != 1:
        raise OptionError("Give exactly one MODEL (or use --compare with result files).")
    if o.log_samples and not o.output_path:
        raise OptionError("--log-samples writes beside the results file: give --output-path too.")
    _evaluate(targets[0], o, access, place)


def _evaluate(model: str, o: EvalOptions, access: ModelAccess, place: DeviceOptions) -> None:
    """One model: score it, print the table, write what was asked for."""
    from ..atomic import write_text_atomic
    from ..evaluation import report
    from ..evaluation.evaluate import harness_outputs, run_eval
    from ..evaluation.harness import to_harness

    result = run_eval(
        model,
        benchmarks=o.benchmarks or ("selfaware",),
        limit=o.limit,
        seed=o.seed,
        split=o.split,
        data_dir=o.data_dir,
        max_new_tokens=o.max_new_tokens,
        batch_size=o.batch_size,
        backend=o.backend,
        refusal_patterns=o.refusal_patterns,
        trust_remote_code=access.trust_remote_code,
        allow_pickle=access.allow_pickle,
        device=place.device,
        dtype=place.dtype,
    )
    n, seconds = len(result["items"]), result["seconds"]
    report.print_tables([("honesty of " + model, *report.result_table(result))])
    where = result["precision"]
    click.echo(
        f"{n} items in {seconds:.1f} s ({n / max(seconds, 1e-9):.2f} items/s) on {where['device']}, {where['dtype']}"
    )
    to_stdout = o.json_out == "-"
    for path in harness_outputs(
        result,
        json_path=None if to_stdout else o.json_out,
        output_path=o.output_path,
        log_samples=o.log_samples,
        bootstrap_iters=o.bootstrap_iters,
    ):
        click.echo(f"wrote {path}")
    if to_stdout:
        doc = to_harness(result, bootstrap_iters=o.bootstrap_iters)
        emit_json("-", doc, indent=1, ensure_ascii=False, allow_nan=False)
    if o.md_out:
        click.echo(f"wrote {write_text_atomic(o.md_out, report.markdown_result(result))}")
    if o.plot_out:
        click.echo(f"wrote {report.plot_f1([(Path(model).name or model, result['metrics'])], o.plot_out)}")


def _compare(files: tuple[str, ...], o: EvalOptions) -> None:
    """Saved results side by side: first the base model's, then the SFT model's, then candidates."""
    from ..atomic import write_text_atomic
    from ..evaluation import report
    from ..evaluation.compare import compare_files

    cmp, results = compare_files(files)
    for mdl, f in zip(cmp["models"], files, strict=False):
        click.echo(f"{mdl['label']:>16} = {mdl['role']:<9} {f}  ({mdl.get('model') or '?'})")
    report.print_tables(report.comparison_tables(cmp))
    if o.md_out:
        click.echo(f"wrote {write_text_atomic(o.md_out, report.markdown_comparison(cmp, list(files)))}")
    if o.plot_out:
        series = [(m["label"], r["metrics"]) for m, r in zip(cmp["models"], results, strict=False)]
        click.echo(f"wrote {report.plot_f1(series, o.plot_out)}")
