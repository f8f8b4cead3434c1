"""Peak memory of ``surgery patch`` against model depth and patch size (issue 13's acceptance).

\b
    python -m benchmarks.scale_memory                       # depth 8 vs 32, r_iw 0.5 vs 0.125
    python -m benchmarks.scale_memory --shallow 2 --deep 4 --hidden 256 --intermediate 1024 --heads 4 --kv-heads 2

Each case runs ``surgery patch`` (``protect``, 1 thread) in a child process on a synthetic Llama pair
(:mod:`benchmarks.synthetic_llama`, cached under ``$SURGERY_CACHE/synthetic``). The child is started
through a small wrapper that writes its own ``VmHWM`` (peak resident set, /proc/self/status) when it
exits: ``ru_maxrss`` from ``wait4`` would do on paper, but Linux carries the parent's high-water mark
over a (v)fork + exec, so a parent that has imported torch would inflate every number. The baseline is
a child that only imports torch, transformers and ``surgery.hcnr.pipeline``.

Cases: the shallow and the deep pair at the default ``--r-iw``, and the shallow pair at the small
``--r-iw``. Checks (issue 13): deep − shallow ≤ 100 MB; every case < baseline + 1024 MB; the two
``r_iw`` cases within 50 MB of each other while their patch sizes differ about 4×. Prints one table and
a PASS/FAIL line per check; exits 1 when a check fails. The measurement is :func:`measure_scale`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from benchmarks.synthetic_llama import SyntheticPair, ensure_pair, spec_for
from surgery.atomic import write_json_atomic
from surgery.commands.options import add_options, options_from
from surgery.options import opt

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024

#: issue 13's bounds
DEPTH_GROWTH_MB = 100.0
OVER_BASELINE_MB = 1024.0
R_IW_RSS_MB = 50.0
#: "differ in size by 4x": the patch-size ratio of r_iw 0.5 to 0.125 must lie in this band
SIZE_RATIO_BAND = (3.0, 5.0)

#: run as ``python -c WRAPPER HWM_FILE (-m MODULE | -c CODE) ARGS...``: writes the child's VmHWM (kB) at exit
WRAPPER = """
import atexit, runpy, sys
hwm_file, mode, target, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def _write_hwm():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(hwm_file, "w") as f:
        f.write(str(kb))
atexit.register(_write_hwm)
if mode == "-m":
    sys.argv = [target] + args
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c"] + args
    exec(compile(target, "<child>", "exec"), {"__name__": "__main__"})
"""

BASELINE_CODE = "import torch, transformers, surgery.hcnr.pipeline"


@dataclass(frozen=True)
class ChildPeak:
    """One child process: its peak resident set, wall time and exit code."""

    peak_mb: float
    seconds: float
    returncode: int
    output_tail: str


def child_env(threads: int = 1) -> dict[str, str]:
    """The environment of a measured child: this checkout first on the path, offline, ``threads`` threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    return env


def peak_of(target: list[str], threads: int = 1, python: str | None = None) -> ChildPeak:
    """Run ``python -m MODULE ARGS`` or ``python -c CODE`` (``target`` = ["-m", module, *args] or ["-c", code])
    in a child and return its VmHWM; a child that fails still reports its peak, with its exit code."""
    with tempfile.TemporaryDirectory(prefix="surgery-hwm-") as tmp:
        hwm = Path(tmp) / "hwm"
        cmd = [python or sys.executable, "-c", WRAPPER, str(hwm), *target]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=child_env(threads), cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        kb = int(hwm.read_text()) if hwm.is_file() else 0
    tail = (proc.stdout + proc.stderr)[-3000:]
    return ChildPeak(peak_mb=kb / 1024, seconds=seconds, returncode=proc.returncode, output_tail=tail)


def baseline_peak(threads: int = 1) -> ChildPeak:
    """The imports' baseline: a child that imports torch, transformers and the pipeline, then exits."""
    peak = peak_of(["-c", BASELINE_CODE], threads)
    if peak.returncode != 0:
        raise RuntimeError(f"the baseline child failed:\n{peak.output_tail}")
    return peak


def patch_args(
    pair: SyntheticPair, out: Path, r_iw: float | None, max_length: int, examples: int, device: str = "cpu"
) -> list[str]:
    """``surgery patch`` arguments for one case (protect; r_cw and the rest at the paper preset's values)."""
    args = [
        "patch",
        str(pair.sft),
        "--base",
        str(pair.base),
        "--honesty-data",
        str(pair.honesty),
        "--task-data",
        str(pair.task),
        "-o",
        str(out),
        "--preset",
        "paper",
        "--compensation",
        "protect",
        "--max-length",
        str(max_length),
        "--max-samples",
        str(examples),
        "--device",
        device,
    ]
    return args + (["--r-iw", str(r_iw)] if r_iw is not None else [])


@dataclass(frozen=True)
class Case:
    """One measured ``surgery patch`` run."""

    name: str
    depth: int
    r_iw: float
    peak_mb: float
    over_baseline_mb: float
    patch_bytes: int
    seconds: float


def measure_patch(
    name: str,
    pair: SyntheticPair,
    depth: int,
    r_iw: float,
    work: Path,
    baseline_mb: float,
    threads: int = 1,
    max_length: int = 48,
    examples: int = 16,
    device: str = "cpu",
) -> Case:
    """Run one patch in a child and measure it; a failing patch raises with the child's output."""
    out = work / ("".join(ch if ch.isalnum() else "-" for ch in name) + ".patch")
    out.unlink(missing_ok=True)
    args = ["--threads", str(threads), "-q", *patch_args(pair, out, r_iw, max_length, examples, device)]
    log.info("%s: surgery %s", name, " ".join(args))
    peak = peak_of(["-m", "surgery.cli", *args], threads)
    if peak.returncode != 0 or not out.is_file():
        raise RuntimeError(f"surgery patch failed for {name} (exit {peak.returncode}):\n{peak.output_tail}")
    size = out.stat().st_size
    out.unlink()
    return Case(name, depth, r_iw, peak.peak_mb, peak.peak_mb - baseline_mb, size, peak.seconds)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ScaleResult:
    baseline_mb: float
    cases: tuple[Case, ...]
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def case(self, name: str) -> Case:
        return next(c for c in self.cases if c.name == name)


def evaluate(baseline_mb: float, shallow: Case, deep: Case, small: Case) -> tuple[Check, ...]:
    """Issue 13's checks on the three cases (``shallow`` doubles as the large-r_iw case)."""
    growth = deep.peak_mb - shallow.peak_mb
    checks = [
        Check(
            f"depth {deep.depth} - depth {shallow.depth} <= {DEPTH_GROWTH_MB:g} MB",
            growth <= DEPTH_GROWTH_MB,
            f"{growth:+.0f} MB",
        )
    ]
    for c in (shallow, deep, small):
        checks.append(
            Check(
                f"{c.name} < baseline + {OVER_BASELINE_MB:g} MB",
                c.peak_mb < baseline_mb + OVER_BASELINE_MB,
                f"{c.peak_mb:.0f} MB vs {baseline_mb + OVER_BASELINE_MB:.0f} MB",
            )
        )
    diff = abs(shallow.peak_mb - small.peak_mb)
    ratio = shallow.patch_bytes / max(1, small.patch_bytes)
    lo, hi = SIZE_RATIO_BAND
    checks.append(
        Check(
            f"r_iw {shallow.r_iw:g} vs {small.r_iw:g}: RSS within {R_IW_RSS_MB:g} MB",
            diff <= R_IW_RSS_MB,
            f"{diff:.0f} MB apart",
        )
    )
    checks.append(
        Check(
            f"r_iw {shallow.r_iw:g} vs {small.r_iw:g}: patch sizes differ ~4x ({lo:g}-{hi:g}x)",
            lo <= ratio <= hi,
            f"{ratio:.2f}x",
        )
    )
    return tuple(checks)


@dataclass(frozen=True)
class ScaleRun:
    """What one run of this script measures."""

    shallow: int = opt(8, "Depth of the shallow pair.", low=1)
    deep: int = opt(32, "Depth of the deep pair.", low=1)
    hidden: int = opt(1024, "Hidden size.", low=1)
    intermediate: int = opt(4096, "MLP intermediate size.", low=1)
    heads: int = opt(16, "Attention heads.", low=1)
    kv_heads: int = opt(4, "Key/value heads.", low=1)
    vocab: int = opt(1024, "Vocabulary size.", low=1)
    dtype: str = opt("float32", "Weight dtype of the pairs.", choices=("float32", "bfloat16"))
    examples: int = opt(16, "Calibration examples in each set.", low=1)
    max_length: int = opt(48, "Tokens per calibration example.", low=8)
    r_iw: float = opt(0.5, "The default-size case's --r-iw.", above=0, high=1)
    small_r_iw: float = opt(0.125, "The small case's --r-iw.", above=0, high=1)
    threads: int = opt(1, "Torch threads of each patch.", low=1)
    device: str = opt("cpu", "The patch's --device (peak RSS is host memory only).")
    seed: int = opt(0, "Seed of the synthetic pairs.")
    cache: str | None = opt(None, "Folder of the synthetic pairs (default: $SURGERY_CACHE/synthetic).")
    json: str | None = opt(None, "Also write the numbers here.")


def pair_for(run: ScaleRun, depth: int) -> SyntheticPair:
    spec = spec_for(
        depth=depth,
        hidden=run.hidden,
        intermediate=run.intermediate,
        heads=run.heads,
        kv_heads=run.kv_heads,
        vocab=run.vocab,
        dtype=run.dtype,
        seed=run.seed,
        examples=run.examples,
    )
    return ensure_pair(spec, run.cache)


def measure_scale(run: ScaleRun, work: Path) -> ScaleResult:
    """Build (or reuse) both pairs, measure the baseline and the three cases, and check them."""
    shallow_pair, deep_pair = pair_for(run, run.shallow), pair_for(run, run.deep)
    baseline = baseline_peak(run.threads).peak_mb
    kw: dict[str, Any] = dict(
        work=work,
        baseline_mb=baseline,
        threads=run.threads,
        max_length=run.max_length,
        examples=run.examples,
        device=run.device,
    )
    shallow = measure_patch(f"depth {run.shallow}", shallow_pair, run.shallow, run.r_iw, **kw)
    deep = measure_patch(f"depth {run.deep}", deep_pair, run.deep, run.r_iw, **kw)
    small = measure_patch(
        f"depth {run.shallow}, r_iw {run.small_r_iw:g}", shallow_pair, run.shallow, run.small_r_iw, **kw
    )
    return ScaleResult(baseline, (shallow, deep, small), evaluate(baseline, shallow, deep, small))


def format_table(result: ScaleResult) -> str:
    """The table and one PASS/FAIL line per check."""
    head = f"{'case':<28} {'peak RSS MB':>12} {'- baseline':>11} {'patch bytes':>13} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    lines.append(f"{'imports baseline':<28} {result.baseline_mb:>12.0f} {0:>11.0f} {'':>13} {'':>8}")
    for c in result.cases:
        lines.append(
            f"{c.name:<28} {c.peak_mb:>12.0f} {c.over_baseline_mb:>11.0f} {c.patch_bytes:>13,} {c.seconds:>8.1f}"
        )
    lines.append("")
    lines += [f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in result.checks]
    return "\n".join(lines)


@click.command(help=__doc__)
@add_options(ScaleRun)
def main(**kwargs: Any) -> None:
    """Measure, print the table and the checks, exit 1 when one fails."""
    run = options_from(ScaleRun, kwargs)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="surgery-scale-") as tmp:
        result = measure_scale(run, Path(tmp))
    print(format_table(result))
    if run.json:
        record = {
            "run": asdict(run),
            "baseline_mb": result.baseline_mb,
            "cases": [asdict(c) for c in result.cases],
            "checks": [asdict(c) for c in result.checks],
        }
        write_json_atomic(run.json, record, indent=1)
    sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
