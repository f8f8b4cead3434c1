"""benchmarks/patch_speed.py without a model: its table, ratio, JSON record, calibration reuse and --help.
The real measurement (the SmolLM2 pair, minutes of CPU) is run by hand: python -m benchmarks.patch_speed."""

import json

import pytest
from click.testing import CliRunner

from benchmarks.patch_speed import (
    CALIB_FILES,
    BenchmarkError,
    MethodRow,
    PatchSpeedRun,
    SpeedResult,
    ensure_calibration,
    format_table,
    main,
    ordered_stages,
    result_record,
)

STAGES = {"load": 1.24, "fisher": 40.0, "selection": 0.5, "compensation": 12.0, "write": 0.76}


def _result(patch_s: float, lora_s: float, *, scored: bool = False) -> SpeedResult:
    f1, acc = (0.744, 0.57) if scored else (None, None)
    patch = MethodRow("HCNR recipe patch", patch_s, patch_s + 4.0, 1834.4, 256, f1, acc)
    lora = MethodRow("LoRA re-tuning", lora_s, lora_s + 4.5, 3246.0, 256, *((0.787, 0.565) if scored else (None, None)))
    return SpeedResult(2, patch, lora, STAGES, 0.5)


def test_table_shows_both_rows_the_ratio_and_the_stages():
    text = format_table(_result(54.5, 138.0))
    lines = text.splitlines()
    assert lines[0] == "| method | seconds | child s | peak RSS MB | examples |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| HCNR recipe patch | 54.5 | 58.5 | 1834 | 256 |"
    assert lines[3] == "| LoRA re-tuning | 138.0 | 142.5 | 3246 | 256 |"
    assert "patch / LoRA: 0.39 (goal <= 0.5: PASS), 2 thread(s)" in lines
    assert "| fisher | 40.0 |" in lines and "| load | 1.2 |" in lines
    assert lines.index("| load | 1.2 |") < lines.index("| write | 0.8 |")  # the report's stage order
    assert "| all stages | 54.5 |" in lines
    assert "honesty F1" not in text


def test_stages_follow_the_pipeline_order_unknown_ones_last():
    report_order = {"compensation": 3.0, "fisher": 2.0, "load": 1.0, "new": 9.0, "selection": 0.5, "write": 0.1}
    assert list(ordered_stages(report_order)) == ["load", "fisher", "selection", "compensation", "write", "new"]


def test_ratio_above_the_goal_fails():
    slow = _result(206.0, 138.0)
    assert slow.ratio == pytest.approx(206 / 138)
    assert not slow.passed
    assert "patch / LoRA: 1.49 (goal <= 0.5: FAIL)" in format_table(slow)
    assert _result(69.0, 138.0).passed and not _result(69.1, 138.0).passed  # at most half


def test_eval_columns_appear_only_with_scores():
    lines = format_table(_result(60.0, 138.0, scored=True)).splitlines()
    assert lines[0].endswith("| honesty F1 | task acc |")
    assert lines[2].endswith("| 256 | 74.4 | 57.0 |")
    assert lines[3].endswith("| 256 | 78.7 | 56.5 |")
    one_scored = SpeedResult(2, MethodRow("p", 1, 2, 3, 4, 0.5, None), MethodRow("l", 2, 3, 4, 5), {}, 0.5)
    assert format_table(one_scored).splitlines()[3].endswith("| 5 | – | – |")


def test_json_record_has_the_table_numbers():
    run = PatchSpeedRun(threads=2)
    record = json.loads(json.dumps(result_record(run, _result(54.5, 138.0))))  # JSON-serialisable as is
    assert record["ratio"] == pytest.approx(54.5 / 138, abs=1e-4) and record["passed"] is True
    assert record["rows"][0]["seconds"] == 54.5 and record["rows"][1]["peak_rss_mb"] == 3246.0
    assert record["patch_stages"] == STAGES and record["threads"] == 2 and record["run"]["max_ratio"] == 0.5


def test_calibration_is_reused_when_both_files_exist(tmp_path):
    for name in CALIB_FILES:
        (tmp_path / name).write_text('{"prompt": "q", "response": "a"}\n')

    def must_not_build(folder):
        raise AssertionError("rebuilt although both files were there")

    assert ensure_calibration(tmp_path, must_not_build) == tuple(tmp_path / n for n in CALIB_FILES)


def test_calibration_is_built_when_a_file_is_missing(tmp_path):
    (tmp_path / CALIB_FILES[0]).write_text("{}\n")
    built = []

    def build(folder):
        built.append(folder)
        for name in CALIB_FILES:
            (folder / name).write_text("{}\n")

    assert ensure_calibration(tmp_path, build) == tuple(tmp_path / n for n in CALIB_FILES)
    assert built == [tmp_path]
    with pytest.raises(BenchmarkError, match="wrote no"):
        ensure_calibration(tmp_path / "empty", lambda folder: None)


def test_help_lists_the_options():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0, res.output
    for flag in ("--threads", "--work-dir", "--eval", "--limit", "--task-limit", "--max-ratio", "--sft-form", "--json"):
        assert flag in res.output
