"""One method of a comparison, in its own process: build the model, then evaluate it.

Running each method in a fresh process makes its peak RSS its own (``ru_maxrss`` never goes down
inside a process) and keeps one method's memory from leaking into the next one's timing.
Usage (by :mod:`.comparison`): ``python -m surgery.baselines.worker JOB.json`` writes ``<work>/result.json``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from ..devices import Placement, resolve_dtype
from ..errors import CalibrationDataError, SurgeryError
from ..evaluation.benchmarks import Item
from ..evaluation.evaluate import evaluate, save_json
from ..evaluation.runner import HFGenerator
from ..jsonl import read_jsonl
from ..modelio import load_model, load_tokenizer, locate
from .methods import Inputs, parse_method, run_method, warm_imports


def run_job(job: dict) -> dict:
    """Build the job's model, evaluate it on the job's items, write ``result.json``; returns the result."""
    torch.set_num_threads(int(job["threads"]))
    work = Path(job["work"])
    inputs = Inputs(**{k: (Path(v) if k.endswith("_data") and v else v) for k, v in job["inputs"].items()})
    method = parse_method(job["method"])
    placement = job_placement(job)
    warm_imports(method.kind)
    info = run_method(method, inputs, work, placement)
    gc.collect()
    if placement.device.type == "cuda":
        torch.cuda.empty_cache()
    items = [Item(**row) for row in read_jsonl(job["items"], what="evaluation items file", error=CalibrationDataError)]
    t0 = time.perf_counter()
    src = locate(info["model"], info.get("model_base"))
    model = load_model(src, dtype=placement.dtype)
    if placement.device.type != "cpu":
        model = model.to(placement.device)
    gen = HFGenerator(model, load_tokenizer(src), batch_size=int(job["batch_size"]))
    result = evaluate(gen, items, max_new_tokens=int(job["max_new_tokens"]))
    info["eval_seconds"] = round(time.perf_counter() - t0, 3)
    result["precision"] = info["precision"] = placement.record()
    save_json(result, work / "eval.json")
    info.update(eval=str(work / "eval.json"), job_hash=job["hash"], threads=int(job["threads"]))
    if job.get("keep_models") is False and info["kind"] not in ("base", "sft"):
        shutil.rmtree(work / "model", ignore_errors=True)
    save_json(info, work / "result.json")
    return info


def job_placement(job: dict) -> Placement:
    """The device and dtype the comparison resolved for this job (CPU float32 for a job that names none)."""
    precision = job.get("precision") or {"device": "cpu", "dtype": "float32"}
    return Placement(torch.device(precision["device"]), resolve_dtype(precision["dtype"]))


def main(argv: list[str] | None = None) -> int:
    """``python -m surgery.baselines.worker JOB.json``: exit 0, or 2 with one sentence on a user error."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m surgery.baselines.worker JOB.json", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet = os.environ.get("SURGERY_QUIET") == "1"
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "torch", "urllib3", "huggingface_hub", "matplotlib", "PIL", "datasets", "trl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        run_job(json.loads(Path(argv[0]).read_text()))
    except SurgeryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
