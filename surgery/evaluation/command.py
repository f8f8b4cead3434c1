"""``surgery eval``: score one model on honesty benchmarks, or compare saved results."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

import click

from .. import __version__
from ..atomic import write_text_atomic
from ..errors import SurgeryError

log = logging.getLogger(__name__)

DEFAULT_BENCHMARKS = ("selfaware",)


@click.command("eval")
@click.argument("targets", nargs=-1, required=True, metavar="MODEL | --compare RESULT.json...")
@click.option("--compare", "compare_mode", is_flag=True,
              help="Compare saved --json results instead: first = base, second = SFT, the rest = candidates.")
@click.option("-b", "--benchmark", "benchmarks", multiple=True, metavar="NAME|FILE.jsonl",
              help="selfaware, falseqa, puqa, pkqa, puqa_pkqa, known_unknowns, nq_open, qa_wikidata, or a JSONL "
                   "of {question, answerable, answers}. Repeatable. [default: selfaware]")
@click.option("--limit", type=int, default=None,
              help="At most N items per benchmark, half answerable and half not where both exist.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --limit sample.")
@click.option("--split", type=click.Choice(["eval", "train", "all"]), default="eval", show_default=True,
              help="Which part of each built-in benchmark (train is for calibration/training data).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the benchmark data [default: $SURGERY_DATA_DIR, ../shared/data, bundled samples].")
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--backend", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write every item's prompt, response and judgements plus the metrics.")
@click.option("--markdown", "md_out", type=click.Path(dir_okay=False), default=None, help="Write a Markdown report.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG chart of honesty F1 per benchmark.")
@click.option("--refusal-patterns", type=click.Path(dir_okay=False), default=None,
              help="File of refusal regexes (one a line) replacing the documented defaults.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the checkpoint folder.")
def eval_command(targets, compare_mode, benchmarks, limit, seed, split, data_dir, max_new_tokens, batch_size,
                 backend, json_out, md_out, plot_out, refusal_patterns, trust_remote_code):
    """Measure honesty: refusal on unanswerable vs answerable questions, F1, RF-delta, accuracy.

    \b
      surgery eval MODEL --benchmark selfaware --benchmark falseqa --limit 300 --json base.json
      surgery eval MODEL --benchmark my_questions.jsonl
      surgery eval --compare base.json sft.json patched.json --markdown report.md --plot f1.png
    """
    from . import report

    if compare_mode:
        if json_out:
            raise SurgeryError("--json writes a single model's result; with --compare use --markdown or --plot.")
        _compare(targets, md_out, plot_out)
        return
    if len(targets) != 1:
        raise SurgeryError("Give exactly one MODEL (or use --compare with result files).")
    if max_new_tokens < 1:
        raise SurgeryError(f"--max-new-tokens must be at least 1 (got {max_new_tokens}).")
    from .benchmarks import load_items
    from .evaluate import evaluate, save_json
    from .refusal import RefusalMatcher, default_matcher
    from .runner import make_generator

    model = targets[0]
    matcher = RefusalMatcher.from_file(refusal_patterns) if refusal_patterns else default_matcher()
    names = benchmarks or DEFAULT_BENCHMARKS
    items = []
    for name in names:  # every input problem surfaces before the model is loaded
        items += load_items(name, data_dir=data_dir, split=split, limit=limit, seed=seed)
    log.info("%d items from %s", len(items), ", ".join(names))
    generator = make_generator(backend, model, batch_size=batch_size, trust_remote_code=trust_remote_code)
    t0 = time.perf_counter()
    result = evaluate(generator, items, max_new_tokens=max_new_tokens, matcher=matcher)
    seconds = time.perf_counter() - t0
    result = {
        "surgery_version": __version__,
        "model": model,
        "command": _command_line(),
        "options": {
            "benchmarks": list(names), "limit": limit, "seed": seed, "split": split, "data_dir": data_dir,
            "max_new_tokens": max_new_tokens, "batch_size": batch_size, "backend": backend,
            "refusal_patterns": list(matcher.patterns), "refusal_answer_follows": matcher.answer_follows,
        },
        "seconds": round(seconds, 2),
        "items_per_second": round(len(items) / seconds, 3) if seconds > 0 else None,
        **result,
    }
    report.print_tables([("honesty of " + model, *report.result_table(result))])
    click.echo(f"{len(items)} items in {seconds:.1f} s ({len(items) / max(seconds, 1e-9):.2f} items/s)")
    if json_out:
        click.echo(f"wrote {save_json(result, json_out)}")
    if md_out:
        click.echo(f"wrote {write_text_atomic(md_out, report.markdown_result(result))}")
    if plot_out:
        click.echo(f"wrote {report.plot_f1([(Path(model).name or model, result['metrics'])], plot_out)}")


def _command_line() -> str | None:
    """The command as typed, when this process is the ``surgery`` CLI (not a test runner or notebook)."""
    if Path(sys.argv[0]).name in ("surgery", "cli.py", "__main__.py"):
        return shlex.join(["surgery"] + sys.argv[1:])
    return None


def _compare(files, md_out, plot_out) -> None:
    from . import report
    from .compare import compare, labels_for
    from .evaluate import load_json

    results = [load_json(f) for f in files]
    labels = labels_for(files)
    cmp = compare(results, labels)
    for mdl, f in zip(cmp["models"], files):
        click.echo(f"{mdl['label']:>16} = {mdl['role']:<9} {f}  ({mdl.get('model') or '?'})")
    report.print_tables(report.comparison_tables(cmp))
    if md_out:
        click.echo(f"wrote {write_text_atomic(md_out, report.markdown_comparison(cmp, list(files)))}")
    if plot_out:
        click.echo(f"wrote {report.plot_f1([(m['label'], r['metrics']) for m, r in zip(cmp['models'], results)], plot_out)}")
