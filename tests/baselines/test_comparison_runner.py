"""The comparison runner's pieces on a tiny pair, without the slow end-to-end bench: the registry runs
a method, a worker process builds and evaluates one, and the shared inputs are read with the one JSONL reader."""

from __future__ import annotations

import json
import os

import pytest

from surgery.baselines.comparison import ComparisonConfig, prepare_inputs, run_worker
from surgery.baselines.methods import Inputs, parse_method, run_method
from surgery.baselines.rait import read_examples
from surgery.errors import CalibrationDataError, SurgeryError
from surgery.evaluation.benchmarks import Item


def test_run_method_interpolation_and_reference_rows(tiny_pair, tmp_path):
    base, sft, _ = tiny_pair
    inputs = Inputs(str(base), str(sft))
    info = run_method(parse_method("interp:0.5"), inputs, tmp_path / "interp")
    assert info["family"] == "interpolation" and info["artifact"] == "checkpoint" and info["artifact_bytes"] > 0
    assert info["share_of_linear"] > 0.9 and info["method_seconds"] >= 0
    ref = run_method(parse_method("sft"), inputs, tmp_path / "sft")
    assert ref["model"] == str(sft) and ref["parameters_changed"] == 0 and "method_seconds" not in ref


def test_methods_needing_data_say_which(tiny_pair, tmp_path):
    base, sft, _ = tiny_pair
    for spec, message in (("hcnr", "calibration data"), ("rait-lora:4", "training data"), ("dpo:4", "preference")):
        with pytest.raises(SurgeryError, match=message):
            run_method(parse_method(spec), Inputs(str(base), str(sft)), tmp_path / "m")


def test_worker_process_builds_and_evaluates_one_method(tiny_pair, tmp_path):
    """The worker imports the same ``surgery`` as this process (its search path, nothing guessed)."""
    base, sft, _ = tiny_pair
    items = tmp_path / "items.jsonl"
    rows = [
        Item("q:1", "mine", "What is one plus one?", True, ["2"]).to_dict(),
        Item("q:2", "mine", "Who wrote the secret paper?", False).to_dict(),
    ]
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    work = tmp_path / "methods" / "interp_0.5"
    work.mkdir(parents=True)
    job = {
        "method": "interp:0.5",
        "inputs": {"base": str(base), "sft": str(sft)},
        "items": str(items),
        "threads": 1,
        "batch_size": 2,
        "max_new_tokens": 2,
        "work": str(work),
        "keep_models": False,
        "hash": "h",
    }
    result = run_worker(job, tmp_path / "methods" / "interp.job.json")
    assert result["job_hash"] == "h" and result["name"] == "interp:0.5"
    assert not (work / "model").exists()  # not kept
    assert len(json.loads((work / "eval.json").read_text())["items"]) == 2
    assert oct((work / "result.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_worker_failure_names_the_method(tmp_path):
    job = {
        "method": "rait-lora:beta=1",
        "inputs": {"base": "b", "sft": "s"},
        "items": str(tmp_path / "none"),
        "threads": 1,
        "batch_size": 1,
        "max_new_tokens": 1,
        "work": str(tmp_path / "w"),
        "hash": "h",
    }
    with pytest.raises(SurgeryError, match=r"Method 'rait-lora:beta=1' failed \(error: .*unknown setting 'beta'"):
        run_worker(job, tmp_path / "bad.job.json")


def test_training_data_errors_are_one_sentence(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"prompt": "q", "response": "a"}\n{"prompt": 3}\n')
    with pytest.raises(CalibrationDataError, match='Line 2 of .* needs "prompt" and "response"'):
        read_examples(bad)
    bad.write_text("{broken\n")
    with pytest.raises(CalibrationDataError, match=":1: the training data has a line that is not JSON"):
        read_examples(bad)
    bad.write_text('{"prompt": "q", "response": "a"}\n\n{"id": "x", "prompt": "r", "response": "b"}\n')
    assert [e["id"] for e in read_examples(bad)] == ["train:1", "x"]


def test_given_inputs_are_used_as_they_are(tmp_path):
    """Nothing is built (no model loaded) when every input a method needs is given."""
    hon, task, train = (tmp_path / f"{n}.jsonl" for n in ("hon", "task", "train"))
    for f in (hon, task, train):
        f.write_text('{"prompt": "q", "response": "a"}\n')
    cfg = ComparisonConfig(
        base="b",
        sft="s",
        out_dir=tmp_path / "out",
        methods=("hcnr", "rait-lora:4"),
        hon_data=hon,
        task_data=task,
        train_data=train,
    )
    inputs, seconds = prepare_inputs(cfg, [parse_method(m) for m in cfg.methods])
    assert (inputs.hon_data, inputs.task_data, inputs.train_data, inputs.pairs_data) == (hon, task, train, None)
    assert seconds == {}
