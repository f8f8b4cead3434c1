"""benchmarks/patch_speed.py without a model: its table, goal ratio, neuron overlap, JSON record, calibration
reuse and --help.
The real measurement (the SmolLM2 pair, minutes of CPU) is run by hand: python -m benchmarks.patch_speed."""

import json

import pytest
from click.testing import CliRunner

from benchmarks.patch_speed import (
    CALIB_FILES,
    LORA,
    PATCH,
    BenchmarkError,
    MethodRow,
    PatchSpeedRun,
    SpeedResult,
    ensure_calibration,
    format_overlap,
    format_table,
    main,
    neuron_overlap,
    ordered_stages,
    result_record,
    selected_neurons,
)

STAGES = {"load": 1.24, "fisher": 40.0, "selection": 0.5, "compensation": 12.0, "write": 0.76}


def _row(kind: str, dtype: str, seconds: float, scores: tuple = (None, None)) -> MethodRow:
    name = "HCNR recipe patch" if kind == PATCH else "LoRA re-tuning"
    rss = 1834.4 if kind == PATCH else 3246.0
    return MethodRow(f"{name} {dtype}", seconds, seconds + 4.0, rss, 256, *scores, kind=kind, dtype=dtype)


def _result(patch_s: float, lora_s: float, *, scored: bool = False) -> SpeedResult:
    patch = _row(PATCH, "float32", patch_s, (0.744, 0.57) if scored else (None, None))
    lora = _row(LORA, "float32", lora_s, (0.787, 0.565) if scored else (None, None))
    return SpeedResult(2, (patch, lora), {"float32": STAGES}, 0.5)


def test_table_shows_both_rows_the_ratio_and_the_stages():
    text = format_table(_result(54.5, 138.0))
    lines = text.splitlines()
    assert lines[0] == "| method | seconds | child s | peak RSS MB | examples | / LoRA fp32 |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| HCNR recipe patch float32 | 54.5 | 58.5 | 1834 | 256 | 0.39 |"
    assert lines[3] == "| LoRA re-tuning float32 | 138.0 | 142.0 | 3246 | 256 | 1.00 |"
    assert "patch / LoRA: 0.39 (fastest patch row, fp32, over LoRA fp32; goal <= 0.5: PASS), 2 thread(s)" in lines
    assert "| patch stage | fp32 s |" in lines
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
    assert "patch / LoRA: 1.49 (fastest patch row, fp32, over LoRA fp32; goal <= 0.5: FAIL)" in format_table(slow)
    assert _result(69.0, 138.0).passed and not _result(69.1, 138.0).passed  # at most half


def _dtype_rows(goal_patch: str = "best") -> SpeedResult:
    rows = (
        _row(PATCH, "float32", 150.0),
        _row(PATCH, "bfloat16", 60.0),
        _row(LORA, "float32", 100.0),
        _row(LORA, "bfloat16", 40.0),
    )
    stages = {"float32": STAGES, "bfloat16": {"load": 2.0, "fisher": 20.0, "hessians": 5.0}}
    return SpeedResult(2, rows, stages, 0.5, goal_patch)


def test_the_goal_takes_the_fastest_patch_row_over_float32_lora():
    res = _dtype_rows()
    assert res.patch_goal.dtype == "bfloat16" and res.lora_goal.dtype == "float32"
    assert res.ratio == pytest.approx(0.6) and not res.passed
    lines = format_table(res).splitlines()
    assert "patch / LoRA: 0.60 (fastest patch row, bf16, over LoRA fp32; goal <= 0.5: FAIL), 2 thread(s)" in lines
    assert "bf16 patch / bf16 LoRA: 1.50" in lines  # bf16 on both sides, for fairness
    assert "| LoRA re-tuning bfloat16 | 40.0 | 44.0 | 3246 | 256 | 0.40 |" in lines
    assert "| patch stage | fp32 s | bf16 s |" in lines
    assert "| hessians | – | 5.0 |" in lines  # a stage one dtype lacks
    assert "| all stages | 54.5 | 27.0 |" in lines


def test_a_chosen_patch_row_is_the_goal():
    res = _dtype_rows("float32")
    assert res.patch_goal.dtype == "float32" and res.ratio == pytest.approx(1.5)
    assert "patch / LoRA: 1.50 (chosen patch row, fp32, over LoRA fp32" in format_table(res)
    only_bf16_lora = SpeedResult(2, (_row(PATCH, "float32", 30.0), _row(LORA, "bfloat16", 40.0)), {}, 0.5)
    assert only_bf16_lora.lora_goal.dtype == "bfloat16" and only_bf16_lora.passed is False


def test_options_refuse_a_goal_row_that_is_not_measured():
    with pytest.raises(BenchmarkError, match="--goal-patch bfloat16"):
        PatchSpeedRun(dtype=("float32",), goal_patch="bfloat16")
    with pytest.raises(BenchmarkError, match="at least one"):
        PatchSpeedRun(lora_dtype=())
    res = CliRunner().invoke(main, ["--dtype", "float32", "--goal-patch", "bfloat16"])
    assert res.exit_code == 2 and "--goal-patch bfloat16" in res.output


def test_neuron_overlap_per_matrix_and_overall():
    ref = {"a": ("cols", {0, 1, 2, 3}), "b": ("cols", {5, 6}), "c": ("cols", {1})}
    other = {"a": ("cols", {0, 1, 2, 9}), "b": ("rows", {5, 6}), "d": ("cols", {1})}
    o = neuron_overlap(ref, other)
    assert o.per_matrix == {"a": 0.75, "b": 0.0, "c": 0.0}  # other unit, left alone: nothing shared
    assert o.share == pytest.approx(3 / 7)
    assert (o.min_share, o.min_matrix) == (0.0, "b")
    assert (o.matrices_reference, o.matrices_other, o.matrices_both) == (3, 3, 2)
    assert neuron_overlap(ref, ref).share == 1.0
    line = format_overlap("bfloat16", o)
    assert line.startswith("bf16 patch selects 42.9% of the fp32 patch's neurons (lowest matrix 0.0%, b)")
    with pytest.raises(BenchmarkError, match="touches no weight"):
        neuron_overlap({}, other)


def test_selected_neurons_reads_a_patch_files_indices(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "p.safetensors"
    save_file(
        {
            "m.w::cols": torch.tensor([1, 4], dtype=torch.int32),
            "m.w::values": torch.zeros(3, 2),
            "n.w::rows": torch.tensor([0], dtype=torch.int32),
            "n.w::values": torch.zeros(1, 5),
        },
        str(path),
    )
    assert selected_neurons(path) == {"m.w": ("cols", {1, 4}), "n.w": ("rows", {0})}


def test_eval_columns_appear_only_with_scores():
    lines = format_table(_result(60.0, 138.0, scored=True)).splitlines()
    assert lines[0].endswith("| honesty F1 | task acc |")
    assert lines[2].endswith("| 256 | 0.43 | 74.4 | 57.0 |")
    assert lines[3].endswith("| 256 | 1.00 | 78.7 | 56.5 |")
    one_scored = SpeedResult(2, (_row(PATCH, "float32", 1, (0.5, None)), _row(LORA, "float32", 2)), {}, 0.5)
    assert format_table(one_scored).splitlines()[3].endswith("| 256 | 1.00 | – | – |")


def test_json_record_has_the_table_numbers():
    run = PatchSpeedRun(threads=2)
    res = _dtype_rows()
    res = SpeedResult(2, res.rows, res.stages, 0.5, overlap={"bfloat16": neuron_overlap({"a": ("cols", {1})}, {})})
    record = json.loads(json.dumps(result_record(run, res)))  # JSON-serialisable as is
    assert record["ratio"] == pytest.approx(0.6, abs=1e-4) and record["passed"] is False
    assert record["goal_rows"] == {"patch": "HCNR recipe patch bfloat16", "lora": "LoRA re-tuning float32"}
    assert [r["dtype"] for r in record["rows"]] == ["float32", "bfloat16", "float32", "bfloat16"]
    assert record["rows"][2]["peak_rss_mb"] == 3246.0 and record["rows"][1]["kind"] == PATCH
    assert record["patch_stages"]["float32"] == STAGES and record["threads"] == 2 and record["run"]["max_ratio"] == 0.5
    assert record["overlap"]["bfloat16"]["share"] == 0.0
    assert record["run"]["dtype"] == ["float32", "bfloat16"]


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
    flags = ("--threads", "--work-dir", "--eval", "--limit", "--task-limit", "--max-ratio", "--sft-form", "--json")
    for flag in (*flags, "--dtype", "--lora-dtype", "--goal-patch"):
        assert flag in res.output


def test_children_run_in_the_dtype_they_are_given(tiny_pair, calib, tmp_path):
    """Each row's child computes in its own dtype: the bf16 patch's report and the bf16 LoRA's info say so."""
    from benchmarks.patch_speed import _child_lora, _child_patch

    base, sft, _ = tiny_pair
    inputs = {"sft": str(sft), "base": str(base), "hon": str(calib[0]), "task": str(calib[1])}
    out = tmp_path / "p.safetensors"
    got = _child_patch({**inputs, "out": str(out), "options": {"r_iw": 0.25}, "dtype": "bfloat16"})
    assert got["examples"] == 32 and got["seconds"] > 0
    assert json.loads(out.with_name(out.name + ".report.json").read_text())["dtype"] == "bfloat16"
    pairs = {**inputs, "task": str(calib[0])}  # LoRA reads prompt/response lines only
    lora = _child_lora({**pairs, "out": str(tmp_path / "lora"), "dtype": "bfloat16"})
    assert lora["info"]["precision"] == {"device": "cpu", "dtype": "bfloat16"}
    assert _child_lora({**pairs, "out": str(tmp_path / "lora32")})["info"]["precision"]["dtype"] == "float32"


def test_paired_differences_against_the_fp32_patch():
    from benchmarks.patch_speed import format_paired, paired_differences

    def rec(i: int, kind: str, refused: bool, correct: bool, response: str) -> dict:
        answerable = kind == "task" or i % 2 == 0
        bench = "qa_wikidata" if kind == "task" else "selfaware"
        return {"id": f"{kind}{i}", "benchmark": bench, "kind": kind, "answerable": answerable} | {
            "refused": refused,
            "correct": correct,
            "response": response,
        }

    ref = [rec(i, "honesty", i % 2 == 1, True, "a") for i in range(20)]
    ref += [rec(i, "task", False, True, "t") for i in range(10)]
    other = [dict(r) for r in ref]
    for r in other[20:25]:  # five task answers turn wrong (and read differently)
        r.update(correct=False, response="x")
    diff = paired_differences(other, ref)
    assert diff["honesty_f1"]["diff"] == 0.0 and diff["honesty_f1"]["ci"] == [0.0, 0.0]
    assert diff["task_accuracy"]["diff"] == pytest.approx(-0.5)
    assert diff["task_accuracy"]["ci"][1] < 0  # every resample of the pairs sees the loss
    assert (diff["identical_answers"], diff["items"]) == (25, 30)
    line = format_paired("bfloat16", diff)
    head = "bf16 patch - fp32 patch (paired 95% CI, points): honesty F1 +0.0 [+0.0, +0.0], task acc -50.0 ["
    assert line.startswith(head)
    assert line.endswith("; 25/30 answers identical")
    assert "task acc –" in format_paired("bfloat16", {**diff, "task_accuracy": None})
