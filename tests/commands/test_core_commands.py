"""Every core command (check, patch, inspect, apply, eval, probe, calib) end to end on a tiny pair.

The core supports the transformers 4.57 line and 5.x (docs/install.md). scripts/test.sh runs this file
(marker ``core``) with the core unit tests in a second venv on transformers 5.x (``.venv-tf5``), so an API
that moved in transformers fails here, in seconds, on both lines. ``-q`` must silence every progress bar,
transformers' own (5.x draws one while loading weights) included.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import transformers
from click.testing import CliRunner, Result
from safetensors.torch import load_file

from surgery.cli import main
from surgery.evaluation.evaluate import load_json
from tests.conftest import write_calibration

pytestmark = pytest.mark.core

#: what a tqdm bar prints ("Loading weights: 100%|####| 12/12 [...]")
PROGRESS_BAR = "%|"


def cli(*args: object) -> Result:
    """``surgery -q ARGS``, asserted to succeed without a progress bar."""
    result = CliRunner().invoke(main, ["-q", *map(str, args)])
    assert result.exit_code == 0, f"surgery {' '.join(map(str, args))} failed:\n{result.output}"
    assert PROGRESS_BAR not in result.output, f"-q printed a progress bar:\n{result.output}"
    return result


def write_questions(path: Path, n: int = 12) -> Path:
    """A user benchmark: half answerable (with answers), half not, worded apart."""
    rows = [
        {"id": f"a{i}", "question": f"What is the capital of France {i}?", "answerable": True, "answers": ["Paris"]}
        for i in range(n // 2)
    ]
    rows += [
        {"id": f"u{i}", "question": f"Who wrote the unknown paper about year {i}?", "answerable": False}
        for i in range(n - n // 2)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def chain(tiny_pair, tmp_path_factory):
    """check -> patch -> inspect -> apply on the tiny pair under umask 022; the outputs' folder."""
    base, sft, _ = tiny_pair
    root = tmp_path_factory.mktemp("core")
    hon, task = write_calibration(root / "calib", n=8)
    old = os.umask(0o022)
    try:
        cli("check", sft, "--base", base, "--json", root / "check.json")
        cli("patch", sft, "--base", base, "--honesty-data", hon, "--task-data", task, "-o", root / "p.safetensors")
        inspected = cli("inspect", root / "p.safetensors", "--json")
        cli("apply", sft, root / "p.safetensors", "-o", root / "fixed")
    finally:
        os.umask(old)
    return root, inspected


def test_check_patch_inspect_apply(chain, tiny_pair):
    root, inspected = chain
    _, sft, _ = tiny_pair
    report = json.loads((root / "check.json").read_text())
    assert report  # the pre-flight wrote its report
    manifest = json.loads(inspected.stdout)
    assert manifest and "hcnr" in json.dumps(manifest).lower()
    fixed, before = load_file(root / "fixed" / "model.safetensors"), load_file(sft / "model.safetensors")
    assert fixed.keys() == before.keys()
    changed = [k for k in fixed if not (fixed[k] == before[k]).all()]
    assert changed and all(".layers." in k for k in changed)  # the patch moved some block weights, nothing else


def test_outputs_get_normal_modes(chain):
    """Under umask 022 a patch is 0644 and a written model 0755/0644, readable by others on a shared machine."""
    root, _ = chain
    assert _mode(root / "p.safetensors") == 0o644
    assert _mode(root / "fixed") == 0o755
    files = list((root / "fixed").iterdir())
    assert files and all(_mode(f) == 0o644 for f in files if f.is_file())


def test_eval_on_a_user_benchmark(chain, tmp_path):
    root, _ = chain
    bench = write_questions(tmp_path / "mine.jsonl")
    out = tmp_path / "eval.json"
    result = cli("eval", root / "fixed", "--benchmark", bench, "--max-new-tokens", 3, "--batch-size", 4, "--json", out)
    assert "surgery_" not in json.loads(out.read_text())["results"] and "mine" in json.loads(out.read_text())["results"]
    record = load_json(out)  # the harness layout, read back as items + metrics
    assert len(record["items"]) == 12 and all(isinstance(r["response"], str) for r in record["items"])
    assert list(record["metrics"]["per_benchmark"]) == ["mine"]
    assert "F1" in result.output


def test_probe_reads_both_models(tiny_pair, tmp_path):
    """probe reuses the shared prompt prefix's cache (a keyword that transformers 5.x renamed)."""
    base, sft, _ = tiny_pair
    bench = write_questions(tmp_path / "mine.jsonl", n=24)
    out = tmp_path / "probe.json"
    cli("probe", sft, "--base", base, "--benchmark", bench, "--limit", 24, "--batch-size", 8, "--json", out)
    record = json.loads(out.read_text())
    assert record["items"]["total"] == 24
    assert all(0.0 <= a <= 1.0 for a in record["auroc"]["transfer"])


def test_calib_probes_a_model(tiny_models, shared_data, tmp_path):
    out = tmp_path / "c"
    model = tiny_models("llama")
    cli("calib", "-o", out, "--model", model, "--n-hon", 8, "--n-task", 4, "--probe", 4, "--data-dir", shared_data)
    assert len((out / "d_hon.jsonl").read_text().splitlines()) == 8
    assert len((out / "d_task.jsonl").read_text().splitlines()) == 4


def test_the_transformers_line_is_one_the_core_supports():
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    assert (major, minor) >= (4, 57) and major <= 5, transformers.__version__


def test_quiet_turns_the_libraries_bars_off_for_its_invocation_only(monkeypatch):
    from transformers.utils import logging as hf_logging

    from surgery import progress

    monkeypatch.setattr(progress, "_quiet", False)
    progress.set_quiet(False)  # whatever an earlier -q invocation left
    hf_logging.enable_progress_bar()
    try:
        progress.set_quiet(True)
        assert not hf_logging.is_progress_bar_enabled()
        progress.set_quiet(False)
        assert hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the user's own choice (HF_HUB_DISABLE_PROGRESS_BARS) is kept
        progress.set_quiet(False)
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        progress.set_quiet(False)
        hf_logging.enable_progress_bar()
