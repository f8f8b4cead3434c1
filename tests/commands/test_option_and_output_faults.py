"""Fault injection on options and outputs (issue 14, "Text and options" and "Outputs").

Each fault asserts what a user is promised: exit code 2, exactly one line on stderr starting
"error: " with no traceback, nothing left at the destination, and every input byte-unchanged.
Most cases fail while the options are parsed and need no model; the rest use the tiny pair, copied
first so that a regression cannot damage the session's shared models.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from surgery.cli import main
from surgery.errors import OptionError
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.options import parse_size
from tests.conftest import write_calibration
from tests.support.faults import assert_refused, patch_args

# ---------------------------------------------------------------- parse-time faults: no model needed

_PATCH = ["patch", "sft", "--honesty-data", "h.jsonl", "--task-data", "t.jsonl"]
_APPLY = ["apply", "sft", "p.safetensors"]

PARSE_FAULTS = [
    (["--threads", "-1", "inspect", "x"], "--threads"),
    (["--threads", "0", "inspect", "x"], "--threads"),
    ([*_PATCH, "--damp", "nan"], "--damp"),
    ([*_PATCH, "--damp", "inf"], "--damp"),
    ([*_PATCH, "--epsilon", "nan"], "--epsilon"),
    ([*_PATCH, "--task-weight", "nan"], "--task-weight"),
    ([*_PATCH, "--task-weight", "-inf"], "--task-weight"),
    ([*_PATCH, "--r-iw", "nan"], "--r-iw"),
    ([*_PATCH, "--max-samples", "0"], "--max-samples"),
    ([*_APPLY, "--max-shard-size", "nan"], "--max-shard-size"),
    ([*_APPLY, "--max-shard-size", "-1"], "--max-shard-size"),
    ([*_APPLY, "--max-shard-size", "0"], "--max-shard-size"),
    ([*_APPLY, "--max-shard-size", "1e400"], "--max-shard-size"),
    ([*_APPLY, "--max-shard-size", "5XB"], "--max-shard-size"),
    (["check", "sft", "--base", "b", "--top", "-1"], "--top"),
    (["eval", "m", "--batch-size", "0"], "--batch-size"),
    (["eval", "m", "--limit", "0"], "--limit"),
    (["eval", "m", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["probe", "s", "--base", "b", "--test-fraction", "nan"], "--test-fraction"),
    (["probe", "s", "--base", "b", "--test-fraction", "1.5"], "--test-fraction"),
    (["probe", "s", "--base", "b", "--probe-c", "0"], "--probe-c"),
    (["probe", "s", "--base", "b", "--probe-c", "inf"], "--probe-c"),
    (["bench", "--base", "b", "--sft", "s", "--n-boot", "0"], "--n-boot"),
    (["bench", "--base", "b", "--sft", "s", "--batch-size", "0"], "--batch-size"),
    (["calib", "--n-task", "0"], "--n-task"),
    (["export", "m", "--max-abs-diff", "nan"], "--max-abs-diff"),
    (["export", "m", "--mean-abs-diff", "-1"], "--mean-abs-diff"),
    (["export", "m", "--min-top1", "nan"], "--min-top1"),
    (["deploy", "s", "PATCHFILE", "--greedy-tokens", "0"], "--greedy-tokens"),
    (["demo", "--damp", "nan"], "--damp"),
    (["demo", "--task-weight", "nan"], "--task-weight"),
]


@pytest.mark.fault("text")
@pytest.mark.parametrize(("args", "flag"), PARSE_FAULTS, ids=[" ".join(a) for a, _ in PARSE_FAULTS])
def test_bad_number_is_one_sentence_naming_the_flag(args, flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "PATCHFILE").write_bytes(b"x")  # deploy's PATCH argument must exist to reach the options
    out = tmp_path / "out"
    needs_out = args[0] in ("export", "deploy", "calib", "bench", "apply", "patch")  # a required option
    assert_refused([*args, *(["-o", str(out)] if needs_out else [])], [tmp_path / "PATCHFILE"], out, words=(flag,))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2", 2 * 1024**3), ("0.5", 1024**3 // 2), ("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 1024**3)],
)
def test_shard_sizes_hugging_face_style_and_plain_gb(text, expected):
    assert parse_size(text, "--max-shard-size") == expected


@pytest.mark.parametrize("text", ["nan", "-1", "0", "inf", "1e400", "5 XB", "", "0.1B"])
def test_shard_size_refused(text):
    with pytest.raises(OptionError, match="--max-shard-size"):
        parse_size(text, "--max-shard-size")


# ---------------------------------------------------------------- outputs over inputs: the tiny pair


@pytest.fixture()
def pair_copy(tiny_pair, tmp_path) -> tuple[Path, Path]:
    """The tiny base and SFT copied into this test's folder: a regression may only damage copies."""
    base, sft, _ = tiny_pair
    return Path(shutil.copytree(base, tmp_path / "base")), Path(shutil.copytree(sft, tmp_path / "sft"))


@pytest.fixture(scope="module")
def made_patch(tiny_pair, tmp_path_factory) -> Path:
    """A real patch of the tiny pair, made once for the apply cases."""
    base, sft, _ = tiny_pair
    folder = tmp_path_factory.mktemp("faults_patch")
    hon, task = write_calibration(folder / "calib")
    patch = folder / "p.safetensors"
    make_patch(str(sft), str(base), str(hon), str(task), str(patch), PatchOptions(max_samples=8))
    return patch


@pytest.mark.fault("outputs")
@pytest.mark.parametrize("target", ["sft_weights", "sft_config", "base_weights", "honesty", "task", "sft_folder"])
def test_patch_output_over_an_input_is_refused(target, pair_copy, calib):
    base, sft = pair_copy
    hon, task = calib
    dest = {
        "sft_weights": sft / "model.safetensors",
        "sft_config": sft / "config.json",
        "base_weights": base / "model.safetensors",
        "honesty": hon,
        "task": task,
        "sft_folder": sft,
    }[target]
    assert_refused(patch_args(sft, base, hon, task, dest), [base, sft, hon, task], dest, words=("-o",))


@pytest.mark.fault("outputs")
def test_patch_output_under_a_file_is_refused_before_work(pair_copy, calib, tmp_path):
    base, sft = pair_copy
    hon, task = calib
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    dest = blocker / "p.safetensors"
    assert_refused(patch_args(sft, base, hon, task, dest), [base, sft, hon, task, blocker], dest, words=("-o",))


@pytest.mark.fault("outputs")
@pytest.mark.parametrize("target", ["sft", "inside_sft", "base", "inside_base", "patch", "parent_of_sft"])
def test_apply_output_over_an_input_is_refused(target, pair_copy, made_patch, tmp_path):
    base, sft = pair_copy
    patch = Path(shutil.copy(made_patch, tmp_path / "p.safetensors"))
    dest = {
        "sft": sft,
        "inside_sft": sft / "repaired",
        "base": base,
        "inside_base": base / "repaired",
        "patch": patch,
        "parent_of_sft": tmp_path,
    }[target]
    args = ["apply", str(sft), str(patch), "--base", str(base), "-o", str(dest)]
    assert_refused(args, [base, sft, patch], dest, words=("-o",))


@pytest.mark.fault("outputs")
def test_apply_output_under_a_file_is_one_sentence(pair_copy, made_patch, tmp_path):
    base, sft = pair_copy
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    dest = blocker / "repaired"
    assert_refused(
        ["apply", str(sft), str(made_patch), "-o", str(dest)], [sft, made_patch, blocker], dest, words=("-o",)
    )


@pytest.mark.fault("outputs")
def test_check_json_under_a_file_is_one_sentence(pair_copy, tmp_path):
    base, sft = pair_copy
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    dest = blocker / "report.json"
    assert_refused(
        ["check", str(sft), "--base", str(base), "--json", str(dest)], [base, sft, blocker], dest, words=("--json",)
    )


@pytest.mark.fault("outputs")
def test_check_json_over_the_sft_config_is_refused(pair_copy):
    base, sft = pair_copy
    dest = sft / "config.json"
    assert_refused(["check", str(sft), "--base", str(base), "--json", str(dest)], [base, sft], dest, words=("--json",))


@pytest.mark.fault("outputs")
def test_check_json_creates_missing_parent_folders(pair_copy, tmp_path):
    """--json into a folder that does not exist yet: the folders are made, as every writer does."""
    base, sft = pair_copy
    dest = tmp_path / "new" / "deeper" / "report.json"
    result = CliRunner().invoke(main, ["-q", "check", str(sft), "--base", str(base), "--json", str(dest)])
    assert result.exit_code == 0, result.output
    assert dest.is_file()


@pytest.mark.fault("text")
def test_bench_refuses_a_missing_base_even_when_no_method_uses_it(pair_copy, tmp_path):
    _, sft = pair_copy
    out = tmp_path / "bench-out"
    missing = tmp_path / "no-such-base"
    args = ["bench", "--base", str(missing), "--sft", str(sft), "-m", "sft", "--report-only", "-o", str(out)]
    assert_refused(args, [sft], out, words=("no-such-base",))


@pytest.mark.fault("text")
def test_bench_refuses_a_missing_sft(pair_copy, tmp_path):
    base, _ = pair_copy
    out = tmp_path / "bench-out"
    args = [
        "bench",
        "--base",
        str(base),
        "--sft",
        str(tmp_path / "no-sft"),
        "-m",
        "base",
        "--report-only",
        "-o",
        str(out),
    ]
    assert_refused(args, [base], out, words=("no-sft",))


def test_apply_accepts_a_hugging_face_shard_size(pair_copy, made_patch, tmp_path):
    """--max-shard-size 1MB splits the tiny model into several shards, as the same size does in transformers."""
    _, sft = pair_copy
    out = tmp_path / "repaired"
    result = CliRunner().invoke(
        main, ["-q", "apply", str(sft), str(made_patch), "-o", str(out), "--max-shard-size", "1MB"]
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert (out / "model.safetensors.index.json").is_file() or (out / "model.safetensors").is_file()


# ---------------------------------------------------------------- one writer per destination; stale temps


@pytest.mark.fault("outputs")
def test_a_destination_another_run_holds_is_refused_with_one_sentence(pair_copy, made_patch, tmp_path):
    """Another process holds the output's lock: refused up front, nothing written, the holder's lock kept."""
    import fcntl
    import os

    from surgery.atomic import lock_path

    _, sft = pair_copy
    dest = tmp_path / "repaired"
    fd = os.open(lock_path(dest), os.O_RDWR | os.O_CREAT)  # another open file description: another holder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242")
        line = assert_refused(["apply", str(sft), str(made_patch), "-o", str(dest)], [sft, made_patch], None)
        assert "Another surgery run (pid 4242) is writing" in line, line
        assert not dest.exists() and lock_path(dest).exists()
    finally:
        os.close(fd)
    res = CliRunner().invoke(main, ["-q", "apply", str(sft), str(made_patch), "-o", str(dest)])
    assert res.exit_code == 0, res.output
    assert (dest / "model.safetensors").is_file() and not lock_path(dest).exists()


@pytest.mark.fault("outputs")
def test_two_concurrent_applies_to_one_output_one_wins_one_sentence(pair_copy, made_patch, tmp_path):
    """The first run holds the destination while writing it; the second exits 2 with one line, no traceback."""
    from tests.support.faults import start_cli, temps_beside, wait_for

    _, sft = pair_copy
    dest, marker = tmp_path / "repaired", tmp_path / "winner-paused"
    args = ["apply", str(sft), str(made_patch), "-o", str(dest)]
    winner = start_cli(args, dest, pause="write", marker=marker, pause_s=5)
    try:
        wait_for(marker, winner)
        loser = start_cli(args, dest)
        out, err = loser.communicate(timeout=600)
        assert loser.returncode == 2, (out, err)
        assert err.count("\n") == 1 and err.startswith("error: Another surgery run"), err
        assert "Traceback" not in err
    finally:
        w_out, w_err = winner.communicate(timeout=600)
    assert winner.returncode == 0, (w_out, w_err)
    expected = tmp_path / "expected"
    assert CliRunner().invoke(main, ["-q", "apply", str(sft), str(made_patch), "-o", str(expected)]).exit_code == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in expected.iterdir())
    assert (dest / "model.safetensors").read_bytes() == (expected / "model.safetensors").read_bytes()
    assert temps_beside(dest) == []


@pytest.mark.fault("outputs")
def test_stale_temps_of_a_killed_run_are_removed_by_the_next_run_only_ours(pair_copy, made_patch, tmp_path):
    """Exactly our temp names for this destination go; look-alikes (other names, other destinations) stay."""
    _, sft = pair_copy
    dest = tmp_path / "repaired"
    stale = [tmp_path / ".repaired.tmp-ab3_x9z1", tmp_path / ".repaired.k2j4h5g6.tmp", tmp_path / ".repaired.lock"]
    stale[0].mkdir()
    (stale[0] / "model.safetensors").write_bytes(b"half")
    stale[1].write_bytes(b"half")
    stale[2].write_text("999999")  # a lock file nobody holds
    kept = [
        tmp_path / ".repaired.tmp-short",
        tmp_path / ".repaired2.tmp-ab3_x9z1",
        tmp_path / "repaired.tmp-ab3_x9z1",
        tmp_path / ".repaired.tmp-ab3_x9z1.mine",
        tmp_path / ".repaired.notes",
    ]
    for p in kept:
        p.write_text("user data")
    res = CliRunner().invoke(main, ["-q", "apply", str(sft), str(made_patch), "-o", str(dest)])
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in stale), [p for p in stale if p.exists()]
    assert all(p.read_text() == "user data" for p in kept)


@pytest.mark.fault("outputs")
@pytest.mark.onnx
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:Exporting aten..index operator:UserWarning")
def test_export_never_deletes_a_users_folder_named_out_rejected(tiny_models, tmp_path):
    """A failing verification goes to a fresh name; the user's OUT.rejected is left as it was."""
    pytest.importorskip("optimum.onnxruntime", reason="needs the [onnx] extra")
    out = tmp_path / "strict"
    mine = tmp_path / "strict.rejected"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    args = ["export", str(tiny_models("llama")), "-o", str(out), "--max-abs-diff", "0", "--greedy-tokens", "1"]
    res = CliRunner().invoke(main, ["-q", "--threads", "1", *args])
    assert res.exit_code == 2, res.output
    assert (mine / "notes.txt").read_text() == "my notes" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    fresh = tmp_path / "strict.rejected-2"
    assert (fresh / "verify.json").is_file() and str(fresh) in res.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".strict")] == []


# ---------------------------------------------------------------- text files: non-UTF-8, nested too deep, not JSON

#: what a hostile or damaged text file may hold
BAD_TEXT = {
    "not-utf8": b'{"prompt": "\xff\xfe caf\xe9", "response": "x"}\n',
    "nested-too-deep": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "not-json": b"{prompt: nope\n",
    "not-an-object": b"[1, 2, 3]\n",
    "control-sequences": b'"\x1b]0;owned\x07\x1b[2J"\n',
}


def _bad(tmp_path: Path, kind: str, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(BAD_TEXT[kind])
    return path


@pytest.mark.fault("text")
@pytest.mark.parametrize("kind", sorted(BAD_TEXT))
@pytest.mark.parametrize("role", ["--honesty-data", "--task-data"])
def test_patch_calibration_file_faults_are_one_sentence(role, kind, pair_copy, calib, tmp_path):
    base, sft = pair_copy
    hon, task = calib
    bad = _bad(tmp_path, kind, "bad.jsonl")
    hon, task = (bad, task) if role == "--honesty-data" else (hon, bad)
    dest = tmp_path / "p.safetensors"
    line = assert_refused(patch_args(sft, base, hon, task, dest), [base, sft, hon, task], dest, words=("bad.jsonl",))
    assert "\x1b" not in line and "\x07" not in line


@pytest.mark.fault("text")
@pytest.mark.parametrize("kind", sorted(BAD_TEXT))
def test_eval_benchmark_file_faults_are_one_sentence(kind, pair_copy, tmp_path):
    _, sft = pair_copy
    bench = _bad(tmp_path, kind, "bench.jsonl")
    out = tmp_path / "result.json"
    args = ["eval", str(sft), "-b", str(bench), "--limit", "2", "--max-new-tokens", "1", "--json", str(out)]
    assert_refused(args, [sft, bench], out, words=("bench.jsonl",))


@pytest.mark.fault("text")
@pytest.mark.parametrize("kind", sorted(BAD_TEXT))
def test_eval_compare_result_file_faults_are_one_sentence(kind, tmp_path):
    good = tmp_path / "good.json"
    good.write_text("{}")
    bad = _bad(tmp_path, kind, "result.json")
    out = tmp_path / "report.md"
    assert_refused(["eval", "--compare", str(good), str(bad), "--markdown", str(out)], [good, bad], out)


@pytest.mark.fault("text")
def test_eval_refusal_patterns_not_utf8_is_one_sentence(pair_copy, tmp_path):
    _, sft = pair_copy
    patterns = tmp_path / "patterns.txt"
    patterns.write_bytes(b"I don't know\n\xff\xfe(\n")
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"question": "Who?", "answerable": false}\n')
    out = tmp_path / "result.json"
    args = ["eval", str(sft), "-b", str(bench), "--refusal-patterns", str(patterns), "--json", str(out)]
    # (the line cannot name the file until surgery/evaluation/refusal.py reads it through a checked reader)
    assert_refused(args, [sft, patterns, bench], out, words=("not UTF-8",))


@pytest.mark.fault("text")
@pytest.mark.parametrize("kind", sorted(BAD_TEXT))
def test_export_prompts_file_faults_are_one_sentence(kind, pair_copy, tmp_path):
    pytest.importorskip("optimum.onnxruntime", reason="needs the [onnx] extra")
    _, sft = pair_copy
    prompts = _bad(tmp_path, kind, "prompts.jsonl")
    out = tmp_path / "onnx"
    assert_refused(["export", str(sft), "-o", str(out), "--prompts", str(prompts)], [sft, prompts], out)


@pytest.mark.fault("outputs")
def test_eval_json_under_a_file_is_one_sentence(pair_copy, tmp_path):
    _, sft = pair_copy
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    dest = blocker / "result.json"
    assert_refused(["eval", str(sft), "--json", str(dest)], [sft, blocker], dest, words=("--json",))


def test_an_in_process_invocation_leaves_the_callers_torch_threads_and_sigterm_handler_alone():
    """`--threads` and the SIGTERM handler hold for one invocation; a caller's own settings come back after it
    (a session that ran `surgery --threads 1` in-process used to compute later patches with 1 thread)."""
    import signal

    import torch

    before_threads, before_handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    wanted = 1 if before_threads != 1 else 2
    res = CliRunner().invoke(main, ["-q", "--threads", str(wanted), "inspect", "/no/such/patch.safetensors"])
    assert res.exit_code == 2
    assert torch.get_num_threads() == before_threads
    assert signal.getsignal(signal.SIGTERM) == before_handler
