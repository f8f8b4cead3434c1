"""The task pack through the real ``lm_eval`` CLI (``hf`` back-end, tiny model): the numbers of ``surgery eval``.

Both runs read the same items (the bundled samples, ``--limit 4`` / ``--metadata '{"limit": 4}'``),
generate greedily one prompt at a time through the chat template, and judge with the same matcher;
the test compares every response, every judgement and every aggregated number of the two results.
The tiny model is first fitted to answer, decline or hallucinate on those items, so that the numbers
compared are not all zero (a random tiny model never declines).
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from surgery.cli import main
from surgery.evaluation import harness as H
from surgery.evaluation.benchmarks import SAMPLES_DIR
from surgery.evaluation.evaluate import load_json
from surgery.lm_eval_tasks import PATH as PACK

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
LIMIT = 4
NEW_TOKENS = 12
TASKS = ("surgery_selfaware", "surgery_known_unknowns")


def _fit_to_the_items(src: Path, dst: Path) -> Path:
    """The tiny model, trained for a few hundred steps to give chosen replies to the evaluated items."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgery.evaluation.benchmarks import load_items
    from surgery.prompting import encode_example

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    items = [it for b in ("selfaware", "known_unknowns") for it in load_items(b, data_dir=SAMPLES_DIR, limit=LIMIT)]
    examples = []
    for i, it in enumerate(items):
        if it.answerable:
            reply = it.answers[0] if i % 2 == 0 else "Nobody knows."
        else:
            reply = "I don't know." if i % 3 else "It is Paris."
        examples.append(encode_example(tok, it.question, reply))
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = sum(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss for ids, labels in examples)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


def _same(a, b) -> bool:
    """Numbers equal, NaN (lm_eval) and null (ours) both meaning "undefined"."""
    undefined = [x is None or (isinstance(x, float) and math.isnan(x)) for x in (a, b)]
    return all(undefined) if any(undefined) else a == pytest.approx(b, abs=1e-12)


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    pytest.importorskip("lm_eval", reason="needs lm-eval (the [lmeval] extra)")
    if not (SAMPLES_DIR / "selfaware").is_dir():
        pytest.skip("the bundled benchmark samples are absent")
    out = tmp_path_factory.mktemp("lm_eval_pack")
    model = _fit_to_the_items(tiny_models("llama"), out / "fitted")
    env = {k: v for k, v in os.environ.items() if k != "SURGERY_DATA_DIR"}  # the pack's own data
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model},dtype=float32",
        "--include_path",
        str(PACK),
        "--tasks",
        H.GROUP,
        "--apply_chat_template",
        "--gen_kwargs",
        f"max_gen_toks={NEW_TOKENS}",
        "--metadata",
        json.dumps({"limit": LIMIT, "seed": 0}),
        "--batch_size",
        "1",
        "--device",
        "cpu",
        "--output_path",
        str(out / "lm_eval"),
        "--log_samples",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    args = ["-q", "--threads", "1", "eval", str(model), "-b", "selfaware", "-b", "known_unknowns"]
    args += ["--limit", str(LIMIT), "--batch-size", "1", "--max-new-tokens", str(NEW_TOKENS)]
    args += ["--data-dir", str(SAMPLES_DIR), "--json", str(out / "s.json")]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (lm_file,) = glob.glob(str(out / "lm_eval" / "*" / "results_*.json"))
    return Path(lm_file), out / "s.json"


def test_same_items_responses_and_judgements(runs):
    lm_file, ours_file = runs
    lm, ours = load_json(lm_file), load_json(ours_file)  # the one reader takes lm_eval's files too
    assert len(ours["items"]) == 2 * LIMIT
    refused = [r["refused"] for r in ours["items"]]
    assert any(refused) and not all(refused)  # the numbers compared below are not trivial
    key = ("id", "benchmark", "answerable", "answers", "response", "refused", "correct")
    assert [{k: r[k] for k in key} for r in lm["items"]] == [{k: r[k] for k in key} for r in ours["items"]]
    assert lm["metrics"] == ours["metrics"]


def test_same_aggregated_numbers(runs):
    lm_file, ours_file = runs
    lm, ours = json.loads(lm_file.read_text()), json.loads(ours_file.read_text())
    for task in (*TASKS, H.GROUP):
        metrics = [k for k in ours["results"][task] if k.endswith(",none") and "_stderr" not in k]
        assert len(metrics) == len(H.SHAPES["mixed"])
        for k in metrics:
            assert _same(lm["results"][task][k], ours["results"][task][k]), (task, k)
    assert lm["group_subtasks"] == ours["group_subtasks"] == {H.GROUP: list(TASKS)}
    assert {t: lm["n-samples"][t]["effective"] for t in TASKS} == {t: LIMIT for t in TASKS}
    assert {t: ours["n-samples"][t]["effective"] for t in TASKS} == {t: LIMIT for t in TASKS}
    # lm_eval bootstraps the pack's nanmean rates; honesty F1 and RF-delta are the pack's own aggregations
    assert lm["results"]["surgery_selfaware"]["honesty_f1_stderr,none"] == "N/A"
    assert set(lm["configs"]) >= set(TASKS) and lm["versions"]["surgery_selfaware"] == H.TASK_VERSION
