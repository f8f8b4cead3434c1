"""The bundled honesty set: its composition, its licence-clean sources, and its byte-exact rebuild."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from surgery.data import build_honesty
from surgery.data.honesty_set import (
    BUNDLED_HONESTY,
    DECLINE_KINDS,
    HONESTY_DIR,
    read_bundled,
    resolve_honesty_data,
)
from surgery.errors import SurgeryError
from surgery.evaluation.benchmarks import split_of
from surgery.evaluation.refusal import RefusalMatcher
from surgery.hcnr.calibration import read_calibration_jsonl
from surgery.hcnr.calibration_sets import bundled_honesty_calibration, purpose_of

REPO = Path(__file__).resolve().parents[2]


def test_the_set_has_40_of_each_kind_to_decline_and_200_controls():
    rows = read_bundled()
    counts = collections.Counter(r["kind"] for r in rows)
    assert counts == {**{k: 40 for k in DECLINE_KINDS}, "answerable": 200}
    assert all(set(r) == {"id", "kind", "source", "prompt", "response"} for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert {r["source"] for r in rows} == {"selfaware", "nq_open", "truthfulqa", "surgery"}


def test_every_decline_is_a_refusal_and_no_control_is():
    matcher = RefusalMatcher()
    rows = read_bundled()
    wrong = [r["id"] for r in rows if matcher.is_refusal(r["response"]) != (r["kind"] != "answerable")]
    assert wrong == []


def test_no_line_is_an_evaluation_item_or_demo_training_data():
    for r in read_bundled():
        if r["source"] in ("selfaware", "nq_open"):
            assert split_of(r["source"], r["id"]) == "train", r["id"]
            assert purpose_of(r["id"]) == "calib", r["id"]
    assert not any(r["source"] in ("falseqa", "puqa", "pkqa") for r in read_bundled())  # no licence to ship them


def test_the_calibration_reader_takes_the_file_as_it_is():
    assert len(read_calibration_jsonl(BUNDLED_HONESTY)) == 400


def test_bundled_is_a_name_and_anything_else_a_path(tmp_path):
    assert resolve_honesty_data("bundled") == BUNDLED_HONESTY
    assert resolve_honesty_data(tmp_path / "mine.jsonl") == tmp_path / "mine.jsonl"


def test_a_calibration_draw_is_half_answerable_and_covers_every_kind():
    examples = bundled_honesty_calibration(n=20, seed=3)
    kinds = collections.Counter(e["kind"] for e in examples)
    assert kinds == {**{k: 2 for k in DECLINE_KINDS}, "answerable": 10}
    assert examples == bundled_honesty_calibration(n=20, seed=3)
    assert examples != bundled_honesty_calibration(n=20, seed=4)


def test_known_controls_come_first_in_the_answerable_half():
    controls = [r["id"] for r in read_bundled() if r["kind"] == "answerable"]
    known = controls[-3:]
    ids = {e["id"] for e in bundled_honesty_calibration(n=6, seed=0, known_ids=known)}
    assert set(known) <= ids


def test_asking_for_more_than_the_set_holds_is_one_sentence():
    with pytest.raises(SurgeryError, match="bundled honesty set has 400 lines"):
        bundled_honesty_calibration(n=500)


def test_attribution_names_each_source_and_its_licence():
    text = (HONESTY_DIR / "ATTRIBUTION.md").read_text()
    for needle in ("SelfAware", "CC-BY-SA-4.0", "NQ-open", "CC BY-SA 3.0", "TruthfulQA", "Apache-2.0", "FalseQA"):
        assert needle in text


def test_the_package_data_globs_ship_the_set():
    assert '"data/**/*"' in (REPO / "pyproject.toml").read_text()
    assert BUNDLED_HONESTY.is_relative_to(REPO / "surgery" / "data")


def _data_dir() -> Path:
    root = os.environ.get("SURGERY_DATA_DIR")
    if not root or not (Path(root) / "truthfulqa" / "TruthfulQA.csv").is_file():
        pytest.skip("the shared data (SURGERY_DATA_DIR with truthfulqa/, selfaware/, nq_open/) is not here")
    return Path(root)


@pytest.mark.tiny
def test_the_script_rebuilds_the_file_byte_for_byte():
    assert build_honesty.main(["--data-dir", str(_data_dir()), "--check"]) == 0


@pytest.mark.tiny
def test_check_fails_on_a_changed_file_and_a_rebuild_restores_it(tmp_path):
    data = _data_dir()
    copy = tmp_path / "honesty.jsonl"
    copy.write_bytes(BUNDLED_HONESTY.read_bytes().replace(b"I don't know", b"I do know", 1))
    assert build_honesty.main(["--data-dir", str(data), "--out", str(copy), "--check"]) == 1
    assert build_honesty.main(["--data-dir", str(data), "--out", str(copy)]) == 0
    assert copy.read_bytes() == BUNDLED_HONESTY.read_bytes()


@pytest.mark.tiny
def test_invented_names_use_no_word_of_the_sources():
    words = build_honesty.known_words(_data_dir())
    invented = [r for r in read_bundled() if r["kind"] == "invented"]
    for r in invented:
        name = r["response"].split(" called ", 1)[1].rsplit(", so", 1)[0]
        new = [w for w in name.replace("'", " ").split() if w.lower() not in build_honesty._FIXED_WORDS]
        assert new and not any(w.lower() in words for w in new), name
