"""`surgery eval` in the lm-evaluation-harness layout: values, stderrs, files, the one reader, the pack."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from surgery.cli import main
from surgery.errors import OptionError, SurgeryError
from surgery.evaluation import harness as H
from surgery.evaluation.benchmarks import BENCHMARKS, Item
from surgery.evaluation.compare import compare_files
from surgery.evaluation.evaluate import harness_outputs, load_json, save_json, score_items, summarize
from surgery.lm_eval_tasks import PATH as PACK
from surgery.lm_eval_tasks import utils as pack

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901)
DATE_ID = "2026-01-02T03-04-05.678901"


def _result(responses_by_bench: dict[str, list[tuple[bool, str]]], kind: dict[str, str] | None = None) -> dict:
    """A run_eval-like result: per benchmark, (answerable, response) pairs; answers are always "paris"."""
    items, responses = [], []
    for bench, rows in responses_by_bench.items():
        for i, (answerable, resp) in enumerate(rows):
            k = (kind or {}).get(bench, "honesty")
            items.append(
                Item(f"{bench}:{i}", bench, f"q{i} of {bench}?", answerable, ["Paris"] if answerable else [], k)
            )
            responses.append(resp)
    records = score_items(items, responses)
    return {
        "model": "org/model",
        "options": {"limit": None, "seed": 0, "split": "eval", "max_new_tokens": 8, "batch_size": 2},
        "precision": {"device": "cpu", "dtype": "float32"},
        "seconds": 1.5,
        "generator": "torch",
        "n_available": {b: 100 for b in responses_by_bench},
        "items": records,
        "metrics": summarize(records),
    }


MIXED = [
    (True, "Paris."),
    (True, "I don't know."),
    (True, "Rome"),
    (False, "I don't know."),
    (False, "Nobody knows."),
    (False, "42"),
]


@pytest.fixture
def result() -> dict:
    return _result(
        {
            "selfaware": MIXED,
            "nq_open": [(True, "Paris"), (True, "Berlin"), (True, "I have no idea")],
            "mine": [(True, "paris!"), (False, "Lyon")],
            "qa_wikidata": [(True, "Paris"), (True, "x")],
        },
        kind={"qa_wikidata": "task"},
    )


def test_layout_has_the_harness_keys_and_our_numbers(result):
    doc = H.to_harness(result, bootstrap_iters=200, date=NOW.timestamp())
    for key in (
        "results",
        "groups",
        "group_subtasks",
        "configs",
        "versions",
        "n-shot",
        "higher_is_better",
        "n-samples",
    ):
        assert key in doc, key
    assert set(doc["results"]) == {"surgery_selfaware", "surgery_nq_open", "mine", "surgery_qa_wikidata", H.GROUP}
    per = result["metrics"]["per_benchmark"]
    sa = doc["results"]["surgery_selfaware"]
    for metric in H.SHAPES["mixed"]:
        assert sa[f"{metric},none"] == per["selfaware"][metric]
        assert isinstance(sa[f"{metric}_stderr,none"], float) and sa[f"{metric}_stderr,none"] > 0
    # only the metrics a benchmark's shape defines
    assert {k.split(",")[0] for k in doc["results"]["surgery_nq_open"] if k.endswith(",none")} == {
        "refusal_answerable",
        "refusal_answerable_stderr",
        "accuracy",
        "accuracy_stderr",
        "over_refusal",
        "over_refusal_stderr",
    }
    assert doc["results"]["surgery_qa_wikidata"]["accuracy,none"] == 0.5
    assert "honesty_f1,none" not in doc["results"]["surgery_qa_wikidata"]
    # the group: macro average over the honesty benchmarks, the task left out
    assert doc["group_subtasks"] == {H.GROUP: ["surgery_selfaware", "surgery_nq_open", "mine"]}
    group = doc["groups"][H.GROUP]
    assert group["honesty_f1,none"] == pytest.approx(result["metrics"]["average"]["honesty_f1"])
    ses = [doc["results"][t]["honesty_f1_stderr,none"] for t in ("surgery_selfaware", "mine")]
    assert group["honesty_f1_stderr,none"] == pytest.approx(math.sqrt(sum(s * s for s in ses)) / 2)
    assert doc["n-samples"]["surgery_selfaware"] == {"original": 100, "effective": 6}
    assert doc["versions"]["surgery_selfaware"] == H.TASK_VERSION
    assert doc["higher_is_better"]["surgery_selfaware"]["over_refusal"] is False
    cfg = doc["configs"]["surgery_selfaware"]
    assert cfg["metadata"]["benchmark"] == "selfaware" and cfg["generation_kwargs"]["max_gen_toks"] == 8
    assert [m["metric"] for m in cfg["metric_list"]] == list(H.SHAPES["mixed"])
    # every item, in the harness sample layout, with our judgements
    samples = doc["samples"]["surgery_selfaware"]
    assert [s["filtered_resps"] for s in samples] == [[r] for _, r in MIXED]
    assert [s["refused"] for s in samples] == [False, True, False, True, True, False]
    assert samples[1]["refusal_answerable"] == 1.0 and samples[1]["refusal_unanswerable"] is None
    assert samples[0]["doc"]["question"] == "q0 of selfaware?"
    json.dumps(doc, allow_nan=False)  # strict JSON


def test_no_bootstrap_gives_na_like_the_harness(result):
    doc = H.to_harness(result, bootstrap_iters=0)
    row = doc["results"]["surgery_selfaware"]
    assert all(row[f"{m}_stderr,none"] == "N/A" for m in H.SHAPES["mixed"])
    assert doc["groups"][H.GROUP]["honesty_f1_stderr,none"] == "N/A"


def test_bootstrap_stderr_of_a_rate_matches_the_closed_form():
    rng = np.random.default_rng(0)
    records = [{"refused": bool(x), "answerable": True, "correct": False} for x in rng.random(400) < 0.3]
    p = sum(r["refused"] for r in records) / len(records)
    se = H.bootstrap_stderrs(records, ["refusal_answerable"], iters=4000)["refusal_answerable"]
    assert se == pytest.approx(math.sqrt(p * (1 - p) / len(records)), rel=0.08)
    # undefined statistic (no unanswerable items): no stderr
    assert H.bootstrap_stderrs(records, ["honesty_f1"], iters=50)["honesty_f1"] is None


@pytest.mark.parametrize("shape", sorted(H.SHAPES))
def test_the_packs_per_item_values_aggregate_to_surgerys_metrics(shape):
    """What lm_eval does with the pack (process_results, then nanmean / our aggregations) = benchmark_metrics."""
    rows = {
        "mixed": MIXED + [(True, "I'm not sure, but it is Paris")],
        "answerable": [(True, "Paris"), (True, "I don't know"), (True, "no")],
        "unanswerable": [(False, "I don't know"), (False, "Paris"), (False, "Nobody knows.")],
        "task": [(True, "Paris"), (True, "London")],
    }[shape]
    kind = "task" if shape == "task" else "honesty"
    res = _result({"b": rows}, kind={"b": kind})
    want = res["metrics"]["per_benchmark"]["b"]
    assert H.shape_of(kind, want["n_answerable"], want["n_unanswerable"]) == shape
    process = getattr(pack, f"process_results_{shape}")
    per_doc = [process({"answerable": a, "answers": ["Paris"] if a else []}, [f" {r} "]) for a, r in rows]
    aggregations = {"honesty_f1": pack.honesty_f1, "rf_delta": pack.rf_delta}
    for metric in H.SHAPES[shape]:
        values = [d[metric] for d in per_doc]
        got = aggregations[metric](values) if metric in aggregations else _nanmean(values)
        expected = want[metric]
        assert (math.isnan(got) and expected is None) or got == pytest.approx(expected), metric


def _nanmean(values):
    arr = np.array(values, dtype=float)
    return math.nan if np.isnan(arr).all() else float(np.nanmean(arr))


class _TagLoader(yaml.SafeLoader):
    """The pack's yaml with lm_eval's ``!function`` tags read as plain strings."""


_TagLoader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix} {loader.construct_scalar(node)}")


def _yaml(name: str) -> dict:
    return yaml.load((PACK / name).read_text(encoding="utf-8"), Loader=_TagLoader)


BUILTIN_SHAPES = {
    "selfaware": "mixed",
    "falseqa": "mixed",
    "puqa": "unanswerable",
    "pkqa": "answerable",
    "puqa_pkqa": "mixed",
    "known_unknowns": "mixed",
    "nq_open": "answerable",
    "qa_wikidata": "task",
}


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_every_builtin_benchmark_is_a_pack_task_with_its_metrics(benchmark):
    cfg = _yaml(f"surgery_{benchmark}.yaml")
    shape = BUILTIN_SHAPES[benchmark]
    assert cfg["task"] == H.task_name(benchmark) and cfg["metadata"]["benchmark"] == benchmark
    assert cfg["process_results"] == f"!function utils.process_results_{shape}"
    assert [m["metric"] for m in cfg["metric_list"]] == list(H.SHAPES[shape])
    for m in cfg["metric_list"]:
        agg = H.METRICS[m["metric"]][0]
        assert m["aggregation"] == (agg if agg == "nanmean" else f"!function utils.{agg}")
        assert m["higher_is_better"] is H.METRICS[m["metric"]][1]
        if agg != "nanmean":
            assert callable(getattr(pack, agg))
    template = _yaml(cfg["include"])
    assert template["generation_kwargs"]["until"] == [] and template["generation_kwargs"]["do_sample"] is False
    assert template["generation_kwargs"]["max_gen_toks"] == 32  # surgery eval's --max-new-tokens default


def test_the_groups_average_like_surgery_eval():
    group = _yaml("surgery_honesty.yaml")
    assert group["group"] == H.GROUP
    assert group["task"] == ["surgery_selfaware", "surgery_known_unknowns"]  # both bundled: works offline
    assert {m["metric"] for m in group["aggregate_metric_list"]} == set(H.SHAPES["mixed"])
    assert all(m["weight_by_size"] is False for m in group["aggregate_metric_list"])
    full = _yaml("surgery_honesty_full.yaml")
    assert all((PACK / f"{t}.yaml").is_file() for t in full["task"])


def test_pack_dataset_is_surgerys_sample(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.delenv("SURGERY_DATA_DIR", raising=False)
    ds = pack.load_dataset(benchmark="selfaware", limit="4", seed=0, pretrained="ignored")["test"]
    from surgery.evaluation.benchmarks import load_items

    assert list(ds["id"]) == [it.id for it in load_items("selfaware", limit=4, seed=0)]
    assert sum(ds["answerable"]) == 2


def test_files_written_like_lm_eval_and_read_back(result, tmp_path):
    written = harness_outputs(
        result, json_path=tmp_path / "r.json", output_path=tmp_path / "out", log_samples=True, now=NOW
    )
    folder = tmp_path / "out" / "org__model"
    assert written == [
        tmp_path / "r.json",
        folder / f"results_{DATE_ID}.json",
        *[folder / f"samples_{t}_{DATE_ID}.jsonl" for t in ("surgery_selfaware", "surgery_nq_open", "mine")],
        folder / f"samples_surgery_qa_wikidata_{DATE_ID}.jsonl",
    ]
    aggregated = json.loads((folder / f"results_{DATE_ID}.json").read_text())
    assert "samples" not in aggregated and aggregated["config"]["bootstrap_iters"] == 1000
    lines = (folder / f"samples_surgery_selfaware_{DATE_ID}.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[3])["doc"]["answerable"] is False
    for path in (tmp_path / "r.json", folder / f"results_{DATE_ID}.json"):
        back = load_json(path)
        assert back["items"] == result["items"]
        assert back["metrics"] == result["metrics"]
        assert back["model"] == "org/model" and back["options"]["max_new_tokens"] == 8
    # a results file beside a .json path, as lm_eval names it
    harness_outputs(result, output_path=tmp_path / "flat" / "run.json", now=NOW)
    assert (tmp_path / "flat" / f"run_{DATE_ID}.json").is_file()


def test_compare_reads_old_and_new_layouts_together(result, tmp_path):
    old = save_json(result, tmp_path / "old.json")  # the layout before the harness one
    (new,) = harness_outputs(result, json_path=tmp_path / "new.json")
    cmp, results = compare_files([old, new])
    assert results[0]["items"] == results[1]["items"]
    assert cmp["models"][1]["per_benchmark"]["selfaware"]["honesty_f1"] == pytest.approx(
        result["metrics"]["per_benchmark"]["selfaware"]["honesty_f1"]
    )


def test_samples_written_by_lm_eval_are_judged_again(tmp_path):
    """lm_eval's samples carry the doc and the response but not our judgements (and NaN values)."""
    doc = H.to_harness(_result({"selfaware": MIXED}), include_samples=False)
    path = tmp_path / f"results_{DATE_ID}.json"
    path.write_text(json.dumps(doc))
    rows = []
    for i, (answerable, resp) in enumerate(MIXED):
        item = {"id": f"selfaware:{i}", "benchmark": "selfaware", "question": "q", "answerable": answerable}
        item |= {"answers": ["Paris"] if answerable else [], "kind": "honesty"}
        rows.append(
            json.dumps({"doc_id": i, "doc": item, "resps": [[resp]], "filtered_resps": [" " + resp], "x": math.nan})
        )
    (tmp_path / f"samples_surgery_selfaware_{DATE_ID}.jsonl").write_text("\n".join(rows) + "\n")
    back = load_json(path)
    assert [r["refused"] for r in back["items"]] == [False, True, False, True, True, False]
    assert [r["correct"] for r in back["items"]] == [True, False, False, False, False, False]


def test_reader_errors_are_one_sentence(result, tmp_path):
    doc = H.to_harness(result, include_samples=False)
    lone = tmp_path / "results_2026-01-02T03-04-05.json"
    lone.write_text(json.dumps(doc))
    with pytest.raises(SurgeryError, match="no per-item samples"):
        load_json(lone)
    (tmp_path / "x.json").write_text("[1]")
    with pytest.raises(SurgeryError, match="not a 'surgery eval --json' result"):
        load_json(tmp_path / "x.json")
    with pytest.raises(OptionError, match="--output-path"):
        harness_outputs(result, log_samples=True)
    with pytest.raises(OptionError, match="--bootstrap-iters"):
        harness_outputs(result, json_path=tmp_path / "y.json", bootstrap_iters=-1)


def test_names_and_dates():
    assert H.task_name("selfaware") == "surgery_selfaware" and H.task_name("mine") == "mine"
    assert H.benchmark_name("surgery_falseqa") == "falseqa" and H.benchmark_name("surgery_mine") == "surgery_mine"
    assert H.sanitize_model_name("/tmp/a/b") == "__tmp__a__b"
    assert H.date_id_of(f"results_{DATE_ID}.json") == DATE_ID
    assert H.date_id_of(f"run_{DATE_ID}.json") == DATE_ID
    assert H.date_id_of("results.json") is None


@pytest.mark.parametrize(
    "args, words",
    [
        (["--log-samples"], "--output-path"),
        (["--compare", "a.json", "b.json", "--output-path", "out"], "--compare"),
        (["--bootstrap-iters", "-1"], "--bootstrap-iters"),
    ],
)
def test_cli_option_errors_come_before_any_model(args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.json", "b.json"):
        Path(name).write_text("{}")
    target = [] if "--compare" in args else [str(tmp_path / "no_model")]
    res = CliRunner().invoke(main, ["eval", *target, *args])
    assert res.exit_code == 2, res.output
    assert words in res.output and "Traceback" not in res.output
