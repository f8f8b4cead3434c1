"""Benchmark loaders on the real files in ../shared/data, the shared split, sampling and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from surgery.errors import CalibrationDataError, SurgeryError
from surgery.evaluation import benchmarks as B

#: benchmark -> (items in all splits, answerable count); counts from each folder's SOURCE.md
EXPECTED = {
    "selfaware": (3369, 2337),
    "falseqa": (2374 + 982 + 1374, (2374 + 982 + 1374) // 2),
    "puqa": (1000, 0),
    "pkqa": (1000, 1000),
    "puqa_pkqa": (2000, 1000),
    "known_unknowns": (46, 23),
    "nq_open": (3610 + 1800, 3610 + 1800),
    "qa_wikidata": (20442, 20442),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loader_counts_on_real_files(shared_data, name):
    items = B.load_items(name, data_dir=shared_data, split="all")
    n, n_ans = EXPECTED[name]
    assert len(items) == n
    assert sum(it.answerable for it in items) == n_ans
    assert len({it.id for it in items}) == n  # ids are unique
    assert all(it.question.strip() for it in items)
    assert all(it.answers for it in items if it.answerable)
    assert not any(it.answers for it in items if not it.answerable)


def test_loader_contents(shared_data):
    sa = {it.id: it for it in B.load_items("selfaware", data_dir=shared_data, split="all")}
    assert sa["selfaware:1"].answers == ["song"] and sa["selfaware:1"].answerable
    assert not sa["selfaware:2338"].answerable
    ku = B.load_items("known_unknowns", data_dir=shared_data, split="all")
    assert not ku[0].answerable  # Lincoln's toenails: gold "Unknown"
    assert ku[1].answers == ["February 12, 1809"]
    fq = B.load_items("falseqa", data_dir=shared_data, split="eval")
    assert len(fq) == 1374 and all(it.id.startswith("falseqa:test-") for it in fq)  # the test file is "eval"
    assert fq[0].question == "Why carbon dioxide is composed of oxygen?" and not fq[0].answerable
    pk = B.load_items("pkqa", data_dir=shared_data, split="all")
    assert not any(a.lower().startswith("answer:") for it in pk for a in it.answers)
    qa = B.load_items("qa_wikidata", data_dir=shared_data, split="all")
    assert qa[0].kind == "task" and qa[0].question == 'Complete the sentence: The genre of "Weird Al" Yankovic is'
    assert qa[0].answers == ["comedy", "parody"]


def test_split_is_deterministic_disjoint_and_about_30_percent(shared_data):
    every = B.load_items("selfaware", data_dir=shared_data, split="all")
    ev = B.load_items("selfaware", data_dir=shared_data, split="eval")
    tr = B.load_items("selfaware", data_dir=shared_data, split="train")
    assert {i.id for i in ev}.isdisjoint({i.id for i in tr})
    assert len(ev) + len(tr) == len(every)
    assert 0.26 < len(ev) / len(every) < 0.34
    assert B.split_of("selfaware", "selfaware:105") == B.split_of("selfaware", "105")  # prefix optional
    # the same question gets the same split whether loaded as puqa or as puqa_pkqa
    alone = {i.id for i in B.load_items("puqa", data_dir=shared_data, split="eval")}
    paired = {i.id for i in B.load_items("puqa_pkqa", data_dir=shared_data, split="eval") if i.id.startswith("puqa:")}
    assert alone == paired


def test_limit_is_balanced_seeded_and_nested(shared_data):
    a = B.load_items("selfaware", data_dir=shared_data, limit=40, seed=3)
    assert len(a) == 40 and sum(i.answerable for i in a) == 20
    assert [i.id for i in a] == [i.id for i in B.load_items("selfaware", data_dir=shared_data, limit=40, seed=3)]
    assert {i.id for i in a} != {i.id for i in B.load_items("selfaware", data_dir=shared_data, limit=40, seed=4)}
    bigger = {i.id for i in B.load_items("selfaware", data_dir=shared_data, limit=80, seed=3)}
    assert {i.id for i in a} <= bigger
    # only 3 answerable known_unknowns items are in "eval": the rest of the limit is unanswerable
    ku = B.load_items("known_unknowns", data_dir=shared_data, limit=10)
    assert len(ku) == 10 and sum(i.answerable for i in ku) == 3
    nq = B.load_items("nq_open", data_dir=shared_data, limit=7)
    assert len(nq) == 7  # answerable only: no balancing possible


def test_user_jsonl(tmp_path):
    p = tmp_path / "mine.jsonl"
    rows = [
        {"question": "Capital of France?", "answerable": True, "answers": ["Paris"]},
        {"id": "x", "question": "What did I eat?", "answerable": False},
        {"question": "Only for training", "answerable": True, "answers": "a", "split": "train"},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = B.load_items(str(p))
    assert [i.id for i in items] == ["mine:1", "x"]
    assert items[0].benchmark == "mine" and items[0].answers == ["Paris"]
    assert len(B.load_items(str(p), split="all")) == 3


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"question": "q", "answerable": true}\n{not json\n', ":2: the benchmark file has a line that is not JSON"),
        ('{"answerable": true}\n', 'no "question"'),
        ('{"question": "q", "answerable": "yes"}\n', "answerable"),
        ('{"question": "q", "answerable": true, "answers": [1]}\n', "answers"),
        ("[1, 2]\n", "must be a JSON object"),
        ("\n", "no questions"),
        ('{"question": "q", "answerable": true, "split": "train"}\n', "no items in split 'eval'"),
    ],
)
def test_user_jsonl_errors(tmp_path, content, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(SurgeryError, match=message):
        B.load_items(str(p))


def test_bad_names_and_dirs(tmp_path, shared_data):
    with pytest.raises(SurgeryError, match="Unknown benchmark 'selfawre'"):
        B.load_items("selfawre", data_dir=shared_data)
    with pytest.raises(SurgeryError, match="does not exist"):
        B.load_items("selfaware", data_dir=tmp_path / "nowhere")
    with pytest.raises(SurgeryError, match="needs selfaware/SelfAware.json"):
        B.load_items("selfaware", data_dir=tmp_path)
    with pytest.raises(SurgeryError, match="does not exist"):
        B.load_items(str(tmp_path / "missing.jsonl"))
    with pytest.raises(SurgeryError, match="--limit"):
        B.load_items("selfaware", data_dir=shared_data, limit=0)


def test_data_dir_resolution(tmp_path, monkeypatch, shared_data):
    monkeypatch.delenv(B.DATA_DIR_ENV, raising=False)
    assert B.resolve_data_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv(B.DATA_DIR_ENV, str(shared_data))
    assert B.resolve_data_dir(None) == shared_data
    assert B.resolve_data_dir(str(tmp_path)) == tmp_path  # the option wins over the env var
    monkeypatch.setenv(B.DATA_DIR_ENV, str(tmp_path / "gone"))
    with pytest.raises(SurgeryError, match="SURGERY_DATA_DIR"):
        B.resolve_data_dir(None)


def test_data_dir_is_never_guessed_from_the_install_location(tmp_path, monkeypatch):
    """Without --data-dir or $SURGERY_DATA_DIR the bundled samples are used, even when a full data folder sits
    beside the code (``../shared/data``): installed code has no repository around it to look beside."""
    monkeypatch.delenv(B.DATA_DIR_ENV, raising=False)
    assert not hasattr(B, "SHARED_DATA_DIR")
    assert B.resolve_data_dir(None) == B.SAMPLES_DIR
    assert B.SAMPLES_DIR.is_relative_to(Path(B.__file__).resolve().parents[1])  # inside the package
    with pytest.raises(SurgeryError, match="--data-dir.*SURGERY_DATA_DIR"):
        B.load_items("puqa")


def test_user_jsonl_errors_are_calibration_data_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b"\xff\xfe not utf-8\n")
    with pytest.raises(CalibrationDataError, match="not UTF-8"):
        B.load_items(str(p))


def test_bundled_samples(monkeypatch):
    """The samples shipped in the package load without any data dir; unlicensed sets say why they are absent."""
    monkeypatch.delenv(B.DATA_DIR_ENV, raising=False)
    assert B.resolve_data_dir(None) == B.SAMPLES_DIR
    for name in ("selfaware", "known_unknowns", "nq_open", "qa_wikidata"):
        items = B.load_items(name, split="all")
        assert items, name
        assert B.load_items(name, split="eval")
    sa = B.load_items("selfaware", split="eval")
    assert sum(i.answerable for i in sa) >= 50 and sum(not i.answerable for i in sa) >= 50
    for name in ("falseqa", "puqa", "pkqa", "puqa_pkqa"):
        with pytest.raises(SurgeryError, match="not bundled"):
            B.load_items(name)
    assert (B.SAMPLES_DIR / "ATTRIBUTION.md").is_file()


def test_bundled_samples_match_the_real_files(shared_data):
    """Each bundled sample item is a verbatim copy of an item of the full set (same id, same content)."""
    for name in ("selfaware", "known_unknowns", "nq_open", "qa_wikidata"):
        full = {i.id: i for i in B.load_items(name, data_dir=shared_data, split="all")}
        for it in B.load_items(name, data_dir=B.SAMPLES_DIR, split="all"):
            assert full[it.id] == it, it.id
