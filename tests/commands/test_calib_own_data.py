"""``surgery calib`` on a fresh install: the bundled honesty set, the user's own task file used whole."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from surgery.cli import main
from surgery.data.honesty_set import BUNDLED_HONESTY
from surgery.hcnr.calibration_sets import task_calibration


def _task_file(path, n):
    rows = [
        {"question": f"Complete: the capital of place {i} is", "answerable": True, "answers": [f"City{i}"]}
        for i in range(n)
    ]
    rows.append({"question": "Who wrote paper 9?", "answerable": False})
    rows.append({"question": "Held out", "answerable": True, "answers": ["x"], "split": "eval"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _calib(tmp_path, *args):
    return CliRunner().invoke(main, ["-q", "calib", "-o", str(tmp_path / "out"), *args], catch_exceptions=False)


@pytest.fixture()
def fresh_install(monkeypatch):
    """No data folder anywhere: only what the package ships."""
    monkeypatch.delenv("SURGERY_DATA_DIR", raising=False)


def test_a_user_task_file_is_used_whole(tmp_path, fresh_install):
    """Before the fix the purpose hash kept about a quarter of the file, and asking for 40 of 40 failed."""
    task = _task_file(tmp_path / "mine.jsonl", 40)
    result = _calib(tmp_path, "--task", str(task), "--n-task", "40", "--n-hon", "8")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "d_task.jsonl").read_text().splitlines()]
    assert sorted(r["response"] for r in rows) == sorted(f"City{i}" for i in range(40))


def test_a_small_user_file_is_not_an_error_and_a_large_one_is_sampled_with_the_seed(tmp_path):
    task = _task_file(tmp_path / "mine.jsonl", 30)
    assert len(task_calibration(n=100, benchmarks=(str(task),))) == 30
    a, b = (task_calibration(n=12, seed=s, benchmarks=(str(task),)) for s in (0, 1))
    assert len(a) == len({r["id"] for r in a}) == 12
    assert a == task_calibration(n=12, seed=0, benchmarks=(str(task),)) and a != b
    assert all(r["response"].startswith("City") for r in a)  # the unanswerable and the eval line stay out


def test_calib_works_without_any_data_folder(tmp_path, fresh_install):
    task = _task_file(tmp_path / "mine.jsonl", 20)
    result = _calib(tmp_path, "--task", str(task), "--n-task", "16", "--n-hon", "40")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert summary["honesty"]["source"] == "bundled" and summary["honesty"]["n"] == 40
    assert summary["honesty"]["kinds"] == {
        "unknowable": 4,
        "false_premise": 4,
        "future_personal": 4,
        "invented": 4,
        "ambiguous": 4,
        "answerable": 20,
    }
    assert "bundled honesty data" in result.output


def test_benchmark_honesty_without_the_data_names_the_source_and_the_fix(tmp_path, fresh_install):
    task = _task_file(tmp_path / "mine.jsonl", 20)
    result = _calib(tmp_path, "--honesty", "benchmarks", "--task", str(task), "--n-task", "4")
    assert result.exit_code == 2
    assert "github.com/GAIR-NLP/alignment-for-honesty" in result.output and "--data-dir" in result.output


def test_too_few_bundled_task_samples_says_how_to_bring_your_own(tmp_path, fresh_install):
    result = _calib(tmp_path, "--n-task", "128")
    assert result.exit_code == 2
    assert "--task FILE.jsonl" in result.output and "samples bundled with surgery" in result.output


def test_patch_reads_the_bundled_honesty_set_by_default(tiny_pair, tmp_path, fresh_install):
    from tests.conftest import write_calibration

    base, sft, _ = tiny_pair
    _, task = write_calibration(tmp_path / "calib")
    out = tmp_path / "p.safetensors"
    args = ["-q", "--threads", "1", "patch", str(sft), "--base", str(base), "--task-data", str(task)]
    result = CliRunner().invoke(main, [*args, "--max-samples", "8", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "--honesty-data bundled" in (tmp_path / "p.safetensors.command.txt").read_text()
    shown = CliRunner().invoke(main, ["inspect", str(out), "--json"], catch_exceptions=False)
    honesty = json.loads(shown.output)["calibration"]["honesty"]
    assert honesty["file"] == "honesty.jsonl"
    assert honesty["sha256"] == hashlib.sha256(BUNDLED_HONESTY.read_bytes()).hexdigest()
