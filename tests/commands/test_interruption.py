"""A run killed mid-way (SIGKILL) or asked to stop (SIGTERM, what ``timeout``, schedulers and containers send)
never leaves a half-written destination, and the next run succeeds with the same bytes.

Each run is a child process stopped at a chosen point of writing its destination (``tests/support/faults.py:
PAUSING_CLI`` wraps ``os.replace``; the product has no hook): ``write`` (the temp beside the destination is half
written) or ``publish`` (the finished temp is about to be renamed onto it), or after a delay: a fixed
pseudo-random fraction of how long the same command takes, uninterrupted, in a child process on this machine (a
fixed number of seconds let a fast machine finish first: CI's apply did).
After SIGTERM the run exits 143 with one line and leaves no temp or lock; after SIGKILL the destination is
absent (or complete) and the rerun removes what the killed run left. Reruns are compared byte for byte with an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from surgery.cli import SIGTERM_EXIT, main
from tests.conftest import write_calibration
from tests.support.faults import start_cli, temps_beside, wait_for

pytestmark = pytest.mark.fault("interruption")
#: the model card names its own folder (and the command that wrote it), so it differs between destinations
CARD = "README.md"


def _files(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (less ``skip`` names)."""
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name not in skip
    }


def _run(args: list[str]) -> None:
    res = CliRunner().invoke(main, ["-q", "--threads", "1", *args])
    assert res.exit_code == 0, (res.output, res.stderr)


def _child_seconds(args: list[str], dest: Path) -> float:
    """Wall seconds ``surgery ARGS`` takes to finish in a child process (start-up included), writing ``dest``."""
    start = time.monotonic()
    proc = start_cli(args, dest)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return time.monotonic() - start


def _interrupt(args: list[str], dest: Path, tmp_path: Path, sig: int, point: str) -> tuple[int, str]:
    """Start ``surgery ARGS``, send ``sig`` at ``point`` (``write``/``publish``, or ``delay:<fraction>``: that
    fraction of an uninterrupted child run of the same command, timed first into a scratch destination);
    returns (exit code, stderr). A run that ended before the delay elapsed is not signalled (exit code 0)."""
    marker = tmp_path / f"paused-{sig}-{point}"
    pause = "" if point.startswith("delay:") else point
    delay = 0.0
    if not pause:
        scratch = tmp_path / "timing" / dest.name
        scratch.parent.mkdir()
        delay = float(point.split(":")[1]) * _child_seconds(
            [str(scratch) if a == str(dest) else a for a in args], scratch
        )
    proc = start_cli(args, dest, pause=pause, marker=marker)
    try:
        if pause:
            wait_for(marker, proc)
        else:
            time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def _check_stopped(rc: int, err: str, sig: int, dest: Path, complete: dict[str, str] | None = None) -> None:
    """SIGTERM: exit 143, one line, nothing beside the destination; SIGKILL: killed. Either: absent or complete."""
    if sig == signal.SIGTERM:
        assert rc == SIGTERM_EXIT, (rc, err)
        # one error line, the last (the exporter's tracer warnings may come before it)
        lines = err.splitlines()
        assert lines[-1].startswith("error: terminated") and sum(x.startswith("error:") for x in lines) == 1, err
        assert temps_beside(dest) == [], temps_beside(dest)
    elif rc == 0:  # a delayed kill that came after the run had finished: it must have finished completely
        assert complete is not None and dest.exists(), (rc, err)
    else:
        assert rc == -signal.SIGKILL, (rc, err)
    assert "Traceback" not in err
    if dest.exists():
        got = _files(dest, skip=(CARD,)) if dest.is_dir() else _digest_file(dest)
        assert complete is not None and got == complete


def _digest_file(path: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}


# ---------------------------------------------------------------- apply


@pytest.fixture(scope="module")
def apply_case(tiny_pair, tmp_path_factory):
    """A patch of the tiny pair and the folder an uninterrupted ``apply`` writes from it."""
    from surgery.hcnr.options import PatchOptions
    from surgery.hcnr.pipeline import make_patch

    base, sft, _ = tiny_pair
    root = tmp_path_factory.mktemp("interrupt_apply")
    hon, task = write_calibration(root / "calib")
    patch = root / "p.safetensors"
    make_patch(str(sft), str(base), str(hon), str(task), str(patch), PatchOptions(max_samples=8))
    reference = root / "reference"
    _run(["apply", str(sft), str(patch), "-o", str(reference)])
    return sft, patch, _files(reference, skip=(CARD,))


@pytest.mark.parametrize(
    ("sig", "point"),
    [
        (signal.SIGKILL, "write"),
        (signal.SIGKILL, "publish"),
        (signal.SIGTERM, "write"),
        (signal.SIGTERM, "publish"),
        (signal.SIGKILL, f"delay:{random.Random(14).uniform(0.3, 0.8):.2f}"),
    ],
    ids=["sigkill-write", "sigkill-publish", "sigterm-write", "sigterm-publish", "sigkill-delay"],
)
def test_apply_interrupted_leaves_nothing_half_written_and_reruns_identically(apply_case, tmp_path, sig, point):
    sft, patch, reference = apply_case
    dest = tmp_path / "repaired"
    args = ["apply", str(sft), str(patch), "-o", str(dest)]
    rc, err = _interrupt(args, dest, tmp_path, sig, point)
    _check_stopped(rc, err, sig, dest, reference)
    if dest.exists():
        shutil.rmtree(dest)  # the delay let the run finish: rerun into a fresh destination
    _run(args)
    assert _files(dest, skip=(CARD,)) == reference and (dest / CARD).is_file()
    assert temps_beside(dest) == []  # the killed run's temp folder and lock were removed by the rerun


# ---------------------------------------------------------------- patch


@pytest.fixture(scope="module")
def patch_case(tiny_pair, tmp_path_factory):
    base, sft, _ = tiny_pair
    root = tmp_path_factory.mktemp("interrupt_patch")
    hon, task = write_calibration(root / "calib")
    args = ["patch", str(sft), "--base", str(base), "--honesty-data", str(hon), "--task-data", str(task)]
    args += ["--max-samples", "8", "--preset", "paper"]  # the run the kill delays were timed on
    reference = root / "reference.safetensors"
    _run([*args, "-o", str(reference)])
    return args, reference.read_bytes()


@pytest.mark.parametrize(
    ("sig", "point"),
    [(signal.SIGTERM, "publish"), (signal.SIGKILL, "publish"), (signal.SIGKILL, "delay:0.6")],
    ids=["sigterm-publish", "sigkill-publish", "sigkill-delay"],
)
def test_patch_interrupted_is_absent_or_complete_and_reruns_identically(patch_case, tmp_path, sig, point):
    """(``patch`` may keep a resume folder of its own; only the destination and the rerun are asserted.)"""
    args, reference = patch_case
    dest = tmp_path / "p.safetensors"
    rc, err = _interrupt([*args, "-o", str(dest)], dest, tmp_path, sig, point)
    if sig == signal.SIGTERM:
        assert rc == SIGTERM_EXIT and err.startswith("error: terminated") and "Traceback" not in err, (rc, err)
    assert not dest.exists() or dest.read_bytes() == reference
    dest.unlink(missing_ok=True)
    _run([*args, "-o", str(dest)])
    assert dest.read_bytes() == reference
    assert not [p for p in temps_beside(dest) if not p.name.endswith(".work")]


# ---------------------------------------------------------------- export

#: export.json records timings and verify.json measured differences: the rest must be byte-identical
_RECORDS = ("export.json", "verify.json")


@pytest.fixture(scope="module")
def export_case(tiny_models, tmp_path_factory):
    pytest.importorskip("optimum.onnxruntime", reason="needs the [onnx] extra")
    model = tiny_models("llama")
    reference = tmp_path_factory.mktemp("interrupt_export") / "reference"
    _run(["export", str(model), "-o", str(reference), "--greedy-tokens", "2"])
    return model, _files(reference, skip=_RECORDS)


@pytest.mark.onnx
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:Exporting aten..index operator:UserWarning")
@pytest.mark.parametrize(
    ("sig", "point"), [(signal.SIGKILL, "publish"), (signal.SIGTERM, "write")], ids=["sigkill-publish", "sigterm-write"]
)
def test_export_interrupted_leaves_nothing_half_written_and_reruns_identically(export_case, tmp_path, sig, point):
    model, reference = export_case
    dest = tmp_path / "onnx"
    args = ["export", str(model), "-o", str(dest), "--greedy-tokens", "2"]
    rc, err = _interrupt(args, dest, tmp_path, sig, point)
    _check_stopped(rc, err, sig, dest)
    assert not dest.exists()
    _run(args)
    assert _files(dest, skip=_RECORDS) == reference
    assert temps_beside(dest) == []
