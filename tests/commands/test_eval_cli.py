"""End-to-end ``surgery eval`` on tiny models, ``--compare``, and one-sentence errors for bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from surgery.cli import main
from surgery.evaluation.benchmarks import Item
from surgery.evaluation.evaluate import load_json, save_json, score_items, summarize


def run(*args):
    result = CliRunner().invoke(main, ["-q", "eval", *map(str, args)], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def evaluated(tiny_models, tiny_pair, shared_data, tmp_path_factory):
    """Two tiny models evaluated on SelfAware + known_unknowns + the task, with every output written."""
    out = tmp_path_factory.mktemp("eval")
    _, sft, _ = tiny_pair
    runs = {}
    for name, model in (("base", tiny_models("llama")), ("sft", sft)):
        res = run(
            model,
            "-b",
            "selfaware",
            "-b",
            "known_unknowns",
            "-b",
            "qa_wikidata",
            "--limit",
            6,
            "--data-dir",
            shared_data,
            "--max-new-tokens",
            4,
            "--batch-size",
            4,
            "--json",
            out / f"{name}.json",
            "--markdown",
            out / f"{name}.md",
            "--plot",
            out / f"{name}.png",
        )
        runs[name] = res
    return out, runs


def test_eval_writes_auditable_json(evaluated, tiny_models):
    out, runs = evaluated
    assert runs["base"].exit_code == 0, runs["base"].output
    assert "selfaware" in runs["base"].output and "F1" in runs["base"].output
    raw = json.loads((out / "base.json").read_text())
    assert set(raw["results"]) == {
        "surgery_selfaware",
        "surgery_known_unknowns",
        "surgery_qa_wikidata",
        "surgery_honesty",
    }
    assert raw["n-samples"]["surgery_selfaware"]["effective"] == 6
    data = load_json(out / "base.json")  # the one reader: harness layout back to items + metrics
    assert data["model"] == str(tiny_models("llama"))
    assert data["options"]["limit"] == 6 and data["options"]["max_new_tokens"] == 4
    assert len(data["items"]) == 18
    for rec in data["items"]:
        assert {"id", "prompt", "response", "refused", "correct", "answerable", "answers"} <= set(rec)
    per = data["metrics"]["per_benchmark"]
    assert set(per) == {"selfaware", "known_unknowns", "qa_wikidata"}
    assert per["selfaware"]["n"] == 6 and per["selfaware"]["n_answerable"] == 3
    assert per["qa_wikidata"]["kind"] == "task"
    assert "honesty_f1" in data["metrics"]["average"]
    assert (out / "base.md").read_text().startswith("# Honesty evaluation")
    assert (out / "base.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_is_deterministic(evaluated, tiny_models, shared_data, tmp_path):
    out, _ = evaluated
    res = run(
        tiny_models("llama"),
        "-b",
        "selfaware",
        "-b",
        "known_unknowns",
        "-b",
        "qa_wikidata",
        "--limit",
        6,
        "--data-dir",
        shared_data,
        "--max-new-tokens",
        4,
        "--batch-size",
        3,
        "--json",
        tmp_path / "again.json",
    )
    assert res.exit_code == 0, res.output
    first = load_json(out / "base.json")["items"]
    again = load_json(tmp_path / "again.json")["items"]
    assert first == again  # same items, same greedy responses with another batch size


def test_compare_of_real_runs(evaluated):
    out, _ = evaluated
    res = run("--compare", out / "base.json", out / "sft.json", "--markdown", out / "cmp.md", "--plot", out / "cmp.png")
    assert res.exit_code == 0, res.output
    assert "base" in res.output and "sft" in res.output and "knowledge-aware" in res.output
    md = (out / "cmp.md").read_text()
    assert "## selfaware" in md and "## knowledge-aware view" in md
    assert (out / "cmp.png").stat().st_size > 1000


def test_compare_reports_recovery_by_hand(tmp_path):
    items = [
        Item("s:1", "s", "q1", True, ["paris"]),
        Item("s:2", "s", "q2", True, ["rome"]),
        Item("s:3", "s", "q3", False),
        Item("s:4", "s", "q4", False),
    ]
    outputs = {
        "base": ["Paris", "Venice", "I don't know", "I don't know"],  # F1 100
        "sft": ["Paris", "Rome", "42", "42"],  # F1 0
        "patched": ["Paris", "I don't know", "I don't know", "42"],  # F1 50 -> recovery 50
    }
    files = []
    for name, resp in outputs.items():
        recs = score_items(items, resp)
        files.append(save_json({"model": name, "items": recs, "metrics": summarize(recs)}, tmp_path / f"{name}.json"))
    res = run("--compare", *files, "--markdown", tmp_path / "cmp.md")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "cmp.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| patched | candidate") and "+50.0" in line)
    assert "| 50.0 |" in row  # F1 50 and recovery +50
    # knowledge view: patched refused the one answerable item the base did not know, not the known one
    krow = next(line for line in md.splitlines() if line.startswith("| patched | candidate | s |"))
    assert krow.split("|")[4:9] == [" 1 ", " 0.0 ", " 1 ", " 100.0 ", " 50.0 "]


def test_user_jsonl_benchmark(tiny_models, tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text(
        '{"question": "Capital of France?", "answerable": true, "answers": ["Paris"]}\n'
        '{"question": "What did I eat today?", "answerable": false}\n'
    )
    res = run(tiny_models("llama"), "-b", p, "--max-new-tokens", 2, "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    data = load_json(tmp_path / "r.json")
    assert [r["prompt"] for r in data["items"]] == ["Capital of France?", "What did I eat today?"]
    assert data["metrics"]["per_benchmark"]["mine"]["n"] == 2


@pytest.mark.parametrize(
    "case", ["missing_dir", "unknown", "malformed", "empty", "compare_one", "not_result", "bad_patterns", "no_model"]
)
def test_bad_input_is_one_sentence_and_exit_2(case, tiny_models, tmp_path):
    model = tiny_models("llama")
    bad = tmp_path / "bad.jsonl"
    args = {
        "missing_dir": [model, "--data-dir", tmp_path / "nowhere"],
        "unknown": [model, "-b", "selfawareness"],
        "malformed": [model, "-b", bad],
        "empty": [model, "-b", tmp_path / "empty.jsonl"],
        "compare_one": ["--compare", tmp_path / "a.json"],
        "not_result": ["--compare", bad, bad],
        "bad_patterns": [model, "--refusal-patterns", tmp_path / "p.txt"],
        "no_model": [tmp_path / "no_such_model"],
    }[case]
    bad.write_text('{"question": "q", "answerable": true}\n{"question": \n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "p.txt").write_text("([unclosed\n")
    res = CliRunner().invoke(main, ["eval", *map(str, args)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip() and not ln.startswith("INFO ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert lines[0].endswith(".") and "\n" not in lines[0], res.output
    assert "Traceback" not in res.output
