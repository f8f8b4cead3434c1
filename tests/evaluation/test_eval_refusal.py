"""The refusal matcher: floors on hand-labelled real model responses, and its documented rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from surgery.errors import SurgeryError
from surgery.evaluation.refusal import DEFAULT_PATTERNS, RefusalMatcher, default_matcher, main, score_labelled

FIXTURE = Path(__file__).parents[1] / "fixtures" / "refusal_labels.jsonl"
#: (precision, recall) floors, a little below what the shipped patterns reach (README, "Refusal detection").
#: "round1" is the set the patterns were first written on; rounds 2 and 3 were labelled with the matcher
#: frozen (their out-of-sample scores are in the docs) and then used to improve it, so all are in-sample now.
FLOORS = {"round1": (0.93, 0.88), "all": (0.88, 0.88)}


def labelled() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_fixture_is_real_and_big_enough():
    rows = labelled()
    assert len(rows) >= 150
    assert sum(r["refusal"] for r in rows) >= 50 and sum(not r["refusal"] for r in rows) >= 50
    for r in rows:
        assert set(r) >= {"response", "refusal", "source", "note", "set"}
        assert isinstance(r["refusal"], bool) and r["response"].strip()
        assert r["source"].startswith("SmolLM2-135M-Instruct")
    assert len({r["response"] for r in rows}) == len(rows)  # no response counted twice
    assert {r["set"] for r in rows} == {"round1", "round2", "round3"}


@pytest.mark.parametrize("subset", sorted(FLOORS))
def test_matcher_floors_on_labelled_responses(subset):
    rows = [r for r in labelled() if subset == "all" or r["set"] == subset]
    s = score_labelled(rows, default_matcher())
    precision, recall = s["precision"], s["recall"]
    lo_p, lo_r = FLOORS[subset]
    assert precision >= lo_p, f"precision {precision:.3f} < {lo_p}"
    assert recall >= lo_r, f"recall {recall:.3f} < {lo_r}"


@pytest.mark.parametrize(
    "text",
    [
        "I don't know.",
        "I'm not sure.",
        "Nobody knows the answer to that.",
        "I'm sorry, but as an AI I don't have access to real-time data.",
        "I cannot predict the future.",
        "I’m unable to answer that question.",  # curly apostrophe
        "There is no definitive answer to this question. However, I can give a general overview.",
        "It's impossible to know what he ate that day.",
        "The question is based on a false premise: cats cannot fly.",
        "That's a very personal decision.",
        "The exact date is unknown.",
    ],
)
def test_refusals(text):
    assert default_matcher().is_refusal(text), text


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        "It is not red; it is blue.",  # merely contains "not"
        "No, penguins do not fly.",
        "I don't know much about opera, but Carmen was written by Bizet.",
        "I'm not sure, but I think it is 1969.",
        "I can't be certain, but it was probably Newton.",
        "Nobody knows for sure, but it's believed to be 2023.",
        "While there's no absolute answer, research suggests that it matters.",
        "I'm not sure where to begin. The paper was written by Smith.",
        "No, I'm sorry for the confusion. The answer is 42.",
    ],
)
def test_answers(text):
    assert not default_matcher().is_refusal(text), text


def test_match_names_the_pattern():
    m = default_matcher()
    assert m.match("I don't know.") == DEFAULT_PATTERNS[0]
    assert m.match("Paris.") is None


def test_custom_pattern_file(tmp_path):
    p = tmp_path / "patterns.txt"
    p.write_text("# my house style\n\\bno comment\\b\n\ncontinuation: none\n")
    m = RefusalMatcher.from_file(p)
    assert m.is_refusal("No comment, but thanks.")  # the continuation rule is off
    assert not m.is_refusal("I don't know.")  # the defaults are replaced, not extended
    p.write_text("\\bno comment\\b\n")
    assert not RefusalMatcher.from_file(p).is_refusal("No comment, but it is Paris.")


@pytest.mark.parametrize("content,message", [("# only a comment\n", "no patterns"), ("(unclosed\n", "not a valid")])
def test_bad_pattern_files(tmp_path, content, message):
    p = tmp_path / "p.txt"
    p.write_text(content)
    with pytest.raises(SurgeryError, match=message):
        RefusalMatcher.from_file(p)
    with pytest.raises(SurgeryError, match="does not exist"):
        RefusalMatcher.from_file(tmp_path / "missing.txt")


def test_score_labelled_by_hand_and_cli(capsys):
    rows = [
        {"response": "I don't know.", "refusal": True},
        {"response": "Paris.", "refusal": True},
        {"response": "I'm not sure.", "refusal": False},
        {"response": "Rome.", "refusal": False},
    ]
    s = score_labelled(rows, default_matcher())
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1) and s["precision"] == 0.5 and s["recall"] == 0.5
    assert main([str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "round1" in out and "all" in out and "precision=" in out
