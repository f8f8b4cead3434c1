"""``surgery calib``: the calibration sets D_hon and D_task for a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..devices import DeviceOptions
from .options import (
    ModelAccess,
    add_options,
    emit_json,
    json_output,
    json_stdout,
    opt,
    options_from,
    output,
    split_commas,
    task_benchmark_choice,
    threads_option,
)


@dataclass(frozen=True)
class CalibOptions:
    out_dir: str = output(
        "Folder for d_hon.jsonl, d_task.jsonl and calibration.json.", metavar="DIRECTORY", aliases=("--out-dir",)
    )
    model: str | None = opt(
        None,
        "Probe this model (folder, hub id in the cache, or PEFT adapter) so that D_hon's "
        "answerable half starts with questions it answers correctly. Default: no probing.",
    )
    honesty: str = opt(
        "bundled",
        "Where D_hon comes from: the honesty set bundled with surgery (5 kinds of questions to decline "
        "plus answerable controls; needs no data folder), or the benchmarks PKQA/PUQA/SelfAware in --data-dir.",
        choices=("bundled", "benchmarks"),
    )
    data_dir: str | None = opt(
        None, "Benchmark data folder (default: $SURGERY_DATA_DIR, else the bundled samples).", metavar="DIRECTORY"
    )
    n_hon: int = opt(128, "Size of D_hon (half answerable, half to decline).", low=2)
    n_task: int = opt(128, "Size of D_task.", low=1)
    task_benchmarks: tuple[str, ...] = task_benchmark_choice(
        "Task benchmark D_task is drawn from, repeatable; or your own JSONL file of task questions "
        '({"question", "answerable": true, "answers"}; used whole, sampled with --seed when larger than --n-task).',
        ("nq_open", "qa_wikidata"),
        aliases=("--task",),
    )
    probe: int = opt(192, "How many answerable questions to probe --model with.", low=1)
    seed: int = opt(0, "", low=0)
    json_out: str | None = json_output("Write the summary (calibration.json's content) to PATH ('-' for stdout).")


@click.command(short_help="Build honesty and task calibration sets for a model.")
@add_options(CalibOptions)
@add_options(ModelAccess)
@add_options(DeviceOptions)
@threads_option
@json_stdout()
def calib(**kwargs: Any) -> None:
    """Build calibration sets D_hon and D_task (JSONL), disjoint from every evaluation item."""
    from ..atomic import write_json_atomic
    from ..devices import resolve
    from ..errors import OptionError
    from ..evaluation.runner import make_generator
    from ..hcnr.calibration_sets import write_calibration
    from ..outputs import check_outputs

    o = options_from(CalibOptions, kwargs)
    access = options_from(ModelAccess, kwargs)
    placement = resolve(options_from(DeviceOptions, kwargs))  # --device cuda without CUDA: refused before any work
    check_outputs((o.model, o.data_dir), files=(("--json", o.json_out),), folders=(("-o", o.out_dir),))
    if o.n_hon < 2 or o.n_task < 1:
        raise OptionError("--n-hon must be at least 2 and --n-task at least 1.")
    generator = None
    if o.model:
        generator = make_generator(
            "torch",
            o.model,
            trust_remote_code=access.trust_remote_code,
            allow_pickle=access.allow_pickle,
            device=placement.device,
            dtype=placement.dtype,
        )
    benches = split_commas(o.task_benchmarks)  # the old --task a,b spelling still works
    summary = write_calibration(
        Path(o.out_dir),
        generator=generator,
        data_dir=o.data_dir,
        n_hon=o.n_hon,
        n_task=o.n_task,
        seed=o.seed,
        probe=o.probe,
        task_benchmarks=benches,
        probe_model=o.model,
        honesty=o.honesty,
    )
    if generator is not None:  # the probing model's precision, next to the summary write_calibration wrote
        summary["precision"] = placement.record()
        write_json_atomic(Path(o.out_dir) / "calibration.json", summary, indent=1)
    h, t = summary["honesty"], summary["task"]
    click.echo(
        f"D_hon   {Path(o.out_dir) / h['file']}  {h['n']} examples from the {h['source']} honesty data "
        f"({h['n_idk']} to decline, {h['n_known_probed']} probed as known)  sha256 {h['sha256'][:16]}"
    )
    click.echo(
        f"D_task  {Path(o.out_dir) / t['file']}  {t['n']} examples ({', '.join(t['benchmarks'])})  "
        f"sha256 {t['sha256'][:16]}"
    )
    if o.json_out:
        emit_json(o.json_out, summary, indent=1)
