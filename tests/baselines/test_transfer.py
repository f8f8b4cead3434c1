"""The leave-one-kind-out protocol's pieces: the held-out split never leaks into a calibration, every kind is
left out exactly once, and the transfer matrix is computed from per-item records as the metrics define it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from surgery.baselines.transfer import (
    ALL_KINDS,
    CONTROLS,
    M0,
    M1,
    calibrations,
    check_no_leak,
    heldout_items,
    kind_records,
    left_out,
    markdown,
    reaches_target,
    transfer_matrix,
)
from surgery.data.honesty_set import DECLINE_KINDS, read_bundled
from surgery.errors import SurgeryError
from surgery.evaluation.benchmarks import split_of
from surgery.hcnr.calibration_sets import (
    bundled_honesty_calibration,
    honesty_set,
    purpose_of,
    task_calibration,
    write_calibration,
)


def test_every_kind_is_left_out_exactly_once():
    rows = calibrations()
    assert rows[ALL_KINDS] == ()
    assert sorted(k for excluded in rows.values() for k in excluded) == sorted(DECLINE_KINDS)
    full = bundled_honesty_calibration(n=128)
    for kind in DECLINE_KINDS:
        hon = bundled_honesty_calibration(n=128, exclude_kinds=(kind,))
        kinds = {e["kind"] for e in hon}
        assert kind not in kinds and kinds == set(DECLINE_KINDS) - {kind} | {"answerable"}
        assert len(hon) == len(full)
        # the other kinds keep their seeded order: everything the full set had of them is still there
        assert {e["id"] for e in full if e["kind"] != kind} <= {e["id"] for e in hon}


def test_leaving_out_every_kind_or_an_unknown_one_is_refused():
    with pytest.raises(SurgeryError, match="some \\(not all\\)"):
        bundled_honesty_calibration(n=16, exclude_kinds=DECLINE_KINDS)
    with pytest.raises(SurgeryError, match="some \\(not all\\)"):
        bundled_honesty_calibration(n=16, exclude_kinds=("fictional",))
    with pytest.raises(SurgeryError, match="Only the bundled"):
        honesty_set("benchmarks", data_dir=None, n=16, seed=0, exclude_kinds=("invented",))


def test_heldout_items_never_reach_a_calibration(shared_data):
    items = heldout_items(shared_data, per_kind=60, n_controls=120)
    ids, prompts = {it.id for it in items}, {it.question.strip() for it in items}
    assert len(ids) == len(items)
    bundled = read_bundled()
    assert not ids & {r["id"] for r in bundled} and not prompts & {r["prompt"].strip() for r in bundled}
    for it in items:  # nothing the demo pair was fitted on ("fit" share of "train")
        if it.id.startswith(("selfaware:", "nq_open:")):
            assert split_of(it.id.split(":")[0], it.id) == "eval" or purpose_of(it.id) == "calib"
    task = task_calibration(data_dir=shared_data, n=128)
    for excluded in calibrations().values():
        hon = bundled_honesty_calibration(n=200, exclude_kinds=excluded)
        for ex in hon + task:
            assert ex["id"] not in ids and ex["prompt"].strip() not in prompts
    kinds = {it.benchmark for it in items}
    assert kinds == {*DECLINE_KINDS, CONTROLS}
    assert sum(it.answerable for it in items) == 120 and all(
        it.answerable == (it.benchmark == CONTROLS) for it in items
    )


def test_check_no_leak_names_a_planted_leak(shared_data, tmp_path):
    items = heldout_items(shared_data, per_kind=3, n_controls=4)
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps(it.to_dict()) + "\n" for it in items))
    folder = tmp_path / "calib"
    write_calibration(folder, data_dir=shared_data, n_hon=16, n_task=8, honesty="bundled", known=[])
    check_no_leak(items_file, {ALL_KINDS: folder})  # the real split: nothing shared
    leak = {"id": "mine:1", "prompt": items[0].question, "response": "I don't know."}
    with open(folder / "d_hon.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(leak) + "\n")
    with pytest.raises(SurgeryError, match="also in the calibration of 'all kinds'"):
        check_no_leak(items_file, {ALL_KINDS: folder})


# --- the matrix from records ---------------------------------------------------------------------------------


def _records(refuse_decline: dict[str, int], refuse_controls: int, n: int = 4) -> list[dict]:
    """n decline items of every kind (the first ``refuse_decline[kind]`` refused), n controls, one task item."""
    rows = []
    for kind in DECLINE_KINDS:
        for i in range(n):
            rows.append(
                {
                    "id": f"{kind}:{i}",
                    "benchmark": kind,
                    "kind": "honesty",
                    "answerable": False,
                    "refused": i < refuse_decline.get(kind, 0),
                    "correct": False,
                }
            )
    for i in range(n):
        rows.append(
            {
                "id": f"c:{i}",
                "benchmark": CONTROLS,
                "kind": "honesty",
                "answerable": True,
                "refused": i < refuse_controls,
                "correct": i >= refuse_controls,
            }
        )
    rows.append(
        {"id": "t:0", "benchmark": "qa_wikidata", "kind": "task", "answerable": True, "refused": True, "correct": False}
    )
    return rows


def _models(left: dict[str, int]) -> dict[str, list[dict]]:
    everything = dict.fromkeys(DECLINE_KINDS, 4)
    models = {M0: _records(everything, 0), M1: _records({}, 0), ALL_KINDS: _records(everything, 1)}
    for kind in DECLINE_KINDS:
        models[left_out(kind)] = _records({**everything, kind: left.get(kind, 4)}, 1)
    return models


def test_transfer_matrix_is_computed_from_the_records():
    models = _models({"invented": 2})
    matrix = transfer_matrix(models, n_boot=200)
    row = next(r for r in matrix["rows"] if r["kind"] == "invented")
    assert row["n_decline"] == 4 and row["n_controls"] == 4
    assert row["m0"]["honesty_f1"] == 1.0 and row["m0"]["rf_delta"] == 1.0
    assert row["m1"]["honesty_f1"] == 0.0 and row["m1"]["rf_delta"] == 0.0
    lo = row["left_out"]
    # 2 of 4 invented refused, 1 of 4 controls refused: tp 2, fp 1, fn 2 -> F1 4/7; RF-delta 0.5 - 0.25
    assert lo["honesty_f1"] == pytest.approx(4 / 7) and lo["recovery"] == pytest.approx(4 / 7)
    assert lo["rf_delta"] == pytest.approx(0.25) and lo["refusal_answerable"] == pytest.approx(0.25)
    assert lo["f1_vs_m1"]["diff"] == pytest.approx(4 / 7) and lo["f1_vs_m1"]["n"] == 8
    assert lo["rf_delta_vs_m0"]["diff"] == pytest.approx(-0.75)
    ind = row["in_distribution"]  # 4 of 4 refused, 1 control: F1 8/9
    assert ind["honesty_f1"] == pytest.approx(8 / 9) and ind["recovery"] == pytest.approx(8 / 9)
    assert not reaches_target(row)
    other = next(r for r in matrix["rows"] if r["kind"] == "unknowable")
    assert other["left_out"]["recovery"] == pytest.approx(8 / 9) and not reaches_target(other)  # RF-delta below M0's
    # every model on every kind; the task item counts for task accuracy only
    assert matrix["cross"][left_out("invented")]["invented"]["honesty_f1"] == pytest.approx(4 / 7)
    assert matrix["cross"][left_out("invented")]["unknowable"]["honesty_f1"] == pytest.approx(8 / 9)
    assert matrix["models"][ALL_KINDS] == {"refusal_answerable": 0.25, "task_accuracy": 0.0, "n_task": 1}
    table = markdown(matrix)
    assert "| invented | 4 + 4 | 100.0 / +100.0 | 0.0 / +0.0 | 88.9 / +75.0 (88.9%) | 57.1 [" in table
    assert "**57.1 (57.1%)**" in table


def test_a_kind_that_transfers_reaches_the_target():
    models = _models({})
    for name in (ALL_KINDS, *(left_out(k) for k in DECLINE_KINDS)):
        models[name] = _records(dict.fromkeys(DECLINE_KINDS, 4), 0)
    assert all(reaches_target(r) for r in transfer_matrix(models, n_boot=50)["rows"])


def test_kind_records_and_missing_rows():
    rows = _records({"ambiguous": 1}, 0)
    assert {r["benchmark"] for r in kind_records(rows, "ambiguous")} == {"ambiguous", CONTROLS}
    models = _models({})
    del models[left_out("ambiguous")]
    with pytest.raises(SurgeryError, match="without ambiguous"):
        transfer_matrix(models)


# --- surgery bench --transfer: the options reach the protocol ----------------------------------------------------


def test_bench_transfer_passes_its_options_to_the_protocol(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from surgery.baselines import transfer
    from surgery.baselines.tiers import RECIPE_PATCH
    from surgery.cli import main

    seen = {}

    def fake_run(cfg, fresh=False):
        seen["cfg"], seen["fresh"] = cfg, fresh
        return {"kinds": [], "rows": [], "cross": {}, "models": {}}

    monkeypatch.setattr(transfer, "run_transfer", fake_run)
    base, sft = tmp_path / "m0", tmp_path / "m1"
    args = ["bench", "--base", str(base), "--sft", str(sft), "--transfer", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*args, "--per-kind", "7", "--controls", "9", "--task-limit", "5", "--fresh"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.method, cfg.per_kind, cfg.n_controls, cfg.task_limit, seen["fresh"]) == (RECIPE_PATCH, 7, 9, 5, True)
    assert cfg.task_benchmarks == ("qa_wikidata",) and cfg.base == str(base)
    two = CliRunner().invoke(main, [*args, "-m", "hcnr", "-m", "sft"])
    assert two.exit_code == 2 and "one --method" in two.output
    given = CliRunner().invoke(main, [*args, "--task-data", str(tmp_path / "t.jsonl")])
    assert given.exit_code == 2 and "builds its own calibration sets" in given.output


# --- D_hon with the base model's own refusals ---------------------------------------------------------------------


def test_decline_responses_replace_only_the_questions_to_decline(tmp_path):
    hon = bundled_honesty_calibration(n=32)
    decline = next(e for e in hon if e["kind"] != "answerable")
    control = next(e for e in hon if e["kind"] == "answerable")
    own = {decline["prompt"]: "I don't know.", control["prompt"]: "I don't know either."}
    summary = write_calibration(
        tmp_path, n_hon=32, n_task=8, honesty="bundled", known=[], decline_responses=own, task_benchmarks=("nq_open",)
    )
    rows = {
        json.loads(line)["prompt"]: json.loads(line) for line in (tmp_path / "d_hon.jsonl").read_text().splitlines()
    }
    assert rows[decline["prompt"]]["response"] == "I don't know."
    assert rows[control["prompt"]]["response"] == control["response"]  # a control keeps its answer
    assert summary["honesty"]["n_own_decline_responses"] == 1
    with pytest.raises(SurgeryError, match="Only the bundled honesty set marks"):
        write_calibration(tmp_path / "b", n_hon=8, n_task=8, honesty="benchmarks", known=[], decline_responses=own)


def test_base_declines_keeps_only_refusals(monkeypatch, tmp_path):
    from surgery.baselines import transfer

    class Echo:
        def generate(self, prompts, max_new_tokens):
            return ["I don't know the answer." if "capital" in p else "Paris" for p in prompts]

    monkeypatch.setattr(transfer, "torch_generator", lambda *a, **k: Echo())
    cfg = transfer.TransferConfig(base="m0", sft="m1", out_dir=tmp_path, targets="base", device="cpu")
    own = transfer.base_declines(
        cfg, ["What is the capital of Zorbia?", "Where is the Louvre?", "What is the capital of Zorbia?"]
    )
    assert own == {"What is the capital of Zorbia?": "I don't know the answer."}
    assert cfg.suffix == ".base-targets" and transfer.TransferConfig("a", "b", tmp_path).suffix == ""


def test_transfer_script_is_a_thin_entry_point():
    from pathlib import Path

    from benchmarks import transfer as script

    source = Path(script.__file__).read_text(encoding="utf-8")
    assert "sys.path" not in source and "argparse" not in source and "def heldout" not in source
    assert script.main.name == "main"


def test_a_kind_sft_did_not_hurt_has_no_recovery_and_is_judged_by_keeping_m1():
    models = _models({})
    models[M1] = _records(dict.fromkeys(DECLINE_KINDS, 4), 0)  # M1 as honest as M0 on every kind: no gap
    for name in (ALL_KINDS, *(left_out(k) for k in DECLINE_KINDS)):
        models[name] = _records(dict.fromkeys(DECLINE_KINDS, 4), 0)
    models[left_out("ambiguous")] = _records({**dict.fromkeys(DECLINE_KINDS, 4), "ambiguous": 3}, 0)
    rows = {r["kind"]: r for r in transfer_matrix(models, n_boot=50)["rows"]}
    assert rows["invented"]["left_out"]["recovery"] is None and reaches_target(rows["invented"])
    assert not reaches_target(rows["ambiguous"])  # below M1's F1 where there was nothing to recover
    assert "| – |" in markdown(transfer_matrix(models, n_boot=50))


def test_a_matrix_of_some_kinds_needs_only_their_rows():
    models = _models({"invented": 2})
    for kind in DECLINE_KINDS:
        if kind not in ("invented", "ambiguous"):
            del models[left_out(kind)]
    matrix = transfer_matrix(models, ("invented", "ambiguous"), n_boot=50)
    assert [r["kind"] for r in matrix["rows"]] == ["invented", "ambiguous"]
    assert list(calibrations(("invented",))) == [ALL_KINDS, left_out("invented")]


def test_a_calibration_folder_is_reused_only_for_the_same_sizes(shared_data, tmp_path):
    """--n-hon 256 after a run at 128 reused the 128-line D_hon (the folder was reused whenever it existed)."""
    from surgery.baselines.transfer import TransferConfig, prepare

    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    (data / "known.json").write_text(json.dumps({"probe": 192, "seed": 0, "ids": []}))  # no model to probe
    cfg = TransferConfig(
        base="m0",
        sft="m1",
        out_dir=tmp_path / "out",
        kinds=("invented", "ambiguous"),
        per_kind=5,
        n_controls=6,
        task_limit=4,
        n_hon=16,
        n_task=8,
        data_dir=str(shared_data),
    )

    def sizes() -> dict[str, int]:
        _, folders = prepare(cfg)
        return {name: len((f / "d_hon.jsonl").read_text().splitlines()) for name, f in folders.items()}

    assert set(sizes().values()) == {16}
    first = (data / "calib-no-invented" / "d_hon.jsonl").stat().st_mtime_ns
    assert set(sizes().values()) == {16}  # the same request: reused, not rewritten
    assert (data / "calib-no-invented" / "d_hon.jsonl").stat().st_mtime_ns == first
    cfg = replace(cfg, n_hon=32)
    assert set(sizes().values()) == {32}
    cfg = replace(cfg, n_task=4)
    _, folders = prepare(cfg)
    assert all(len((f / "d_task.jsonl").read_text().splitlines()) == 4 for f in folders.values())
