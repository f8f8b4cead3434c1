"""Calibration sets (surgery.hcnr.calibration_sets) and the demo pair's alignment and SFT sets.

Sizes, seeds, and disjointness from each other and from eval.
"""

from __future__ import annotations

import json

import pytest

from surgery.errors import SurgeryError
from surgery.evaluation.benchmarks import Item, split_of
from surgery.hcnr import calibration_sets as C
from surgery.pair import data as D


def _split(ex_id: str) -> str:
    return split_of(ex_id.split(":", 1)[0], ex_id)


def test_purpose_is_a_fixed_quarter():
    ids = [f"selfaware:{i}" for i in range(4000)]
    calib = sum(C.purpose_of(i) == "calib" for i in ids)
    assert 0.22 < calib / len(ids) < 0.28
    assert C.purpose_of("pkqa:12") == C.purpose_of("pkqa:12")


def test_sets_come_from_train_and_never_overlap(shared_data):
    known = C.train_pool("selfaware", "fit", data_dir=shared_data, answerable=True)[:40]
    align = D.alignment_set(known, data_dir=shared_data, n_answerable=100, n_unknown=100, seed=0)
    sft = D.sft_set(data_dir=shared_data, n_open=50, n_task=50, seed=0)
    hon = C.honesty_calibration(data_dir=shared_data, n=64, seed=0)
    task = C.task_calibration(data_dir=shared_data, n=64, seed=0)
    sets = {"align": align, "sft": sft, "hon": hon, "task": task}
    assert [len(s) for s in sets.values()] == [200, 100, 64, 64]
    for name, s in sets.items():
        assert all(_split(e["id"]) == "train" for e in s), name
        assert len({e["id"] for e in s}) == len(s), name
    for a, set_a in sets.items():
        for b, set_b in sets.items():
            if a < b:
                assert not ({e["id"] for e in set_a} & {e["id"] for e in set_b}), (a, b)
    assert sum(e["response"] == C.IDK_RESPONSE for e in align) == 100
    assert sum(e["response"] == C.IDK_RESPONSE for e in hon) == 32
    assert {e["id"] for e in align} >= {it.id for it in known}
    assert all(e["prompt"].startswith("Complete the sentence: ") for e in task if e["id"].startswith("qa_wikidata:"))


def test_sets_are_deterministic_and_hashed(shared_data):
    a = D.sft_set(data_dir=shared_data, n_open=20, n_task=20, seed=1)
    b = D.sft_set(data_dir=shared_data, n_open=20, n_task=20, seed=1)
    c = D.sft_set(data_dir=shared_data, n_open=20, n_task=20, seed=2)
    assert C.examples_sha256(a) == C.examples_sha256(b) != C.examples_sha256(c)


def test_idk_response_is_a_refusal():
    from surgery.evaluation.refusal import default_matcher

    assert default_matcher().is_refusal(C.IDK_RESPONSE)


class _Echo:
    """A generator that answers correctly for every other item."""

    name = "echo"

    def __init__(self, items):
        self.answers = {it.question: (it.answers[0] if i % 2 == 0 else "no idea") for i, it in enumerate(items)}

    def generate(self, prompts, max_new_tokens):
        return [f"It is {self.answers[p]}." for p in prompts]


def test_probe_keeps_what_the_model_answers_correctly():
    items = [Item(f"selfaware:{i}", "selfaware", f"q{i}?", True, [f"answer {i}"]) for i in range(6)]
    known = C.probe_known(_Echo(items), items)
    assert [it.id for it in known] == ["selfaware:0", "selfaware:2", "selfaware:4"]


def test_write_calibration_files_and_summary(shared_data, tmp_path):
    pool = C.known_candidates(data_dir=shared_data, purpose="calib", n=20, seed=0)
    summary = C.write_calibration(
        tmp_path, generator=_Echo(pool), data_dir=shared_data, n_hon=16, n_task=8, probe=20, probe_model="echo"
    )
    lines = [json.loads(x) for x in (tmp_path / "d_hon.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and all(set(x) == {"id", "prompt", "response"} for x in lines)
    assert summary["honesty"]["n_known_probed"] == 8 and summary["honesty"]["n_idk"] == 8
    assert summary["honesty"]["sha256"] == C.examples_sha256(lines)
    assert len((tmp_path / "d_task.jsonl").read_text().splitlines()) == 8
    assert json.loads((tmp_path / "calibration.json").read_text())["probe_model"] == "echo"
    from surgery.hcnr.calibration import read_calibration_jsonl

    assert len(read_calibration_jsonl(tmp_path / "d_hon.jsonl")) == 16


def test_asking_for_too_many_items_is_a_user_error(shared_data):
    with pytest.raises(SurgeryError, match="available"):
        D.sft_set(data_dir=shared_data, n_open=10**6, n_task=1)
