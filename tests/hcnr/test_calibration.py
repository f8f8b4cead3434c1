"""Calibration files: both line formats parse; every bad file is one CalibrationDataError naming file and line."""

from __future__ import annotations

import json

import pytest

from surgery.errors import CalibrationDataError
from surgery.hcnr.calibration import read_calibration_jsonl


def test_both_line_formats(tmp_path):
    p = tmp_path / "c.jsonl"
    msgs = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    p.write_text(json.dumps({"prompt": "Q?", "response": "A."}) + "\n\n" + json.dumps({"messages": msgs}) + "\n")
    got = read_calibration_jsonl(p)
    assert [(e.prompt, e.response) for e in got] == [("Q?", "A."), ((("user", "Hi?"),), "Hello.")]


@pytest.mark.parametrize(
    "text, where",
    [
        ('{"prompt": "Q?", "response": "A."}\n{broken\n', ":2:"),
        ("[1, 2]\n", ":1:"),
        ('{"prompt": "Q?"}\n', ":1:"),
        ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "again"}]}\n', ":1:"),
        ("\n\n", "no examples"),
    ],
)
def test_bad_files_are_one_calibration_error(tmp_path, text, where):
    p = tmp_path / "c.jsonl"
    p.write_text(text)
    with pytest.raises(CalibrationDataError, match=where) as err:
        read_calibration_jsonl(p, "honesty calibration file")
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CalibrationDataError, match="does not exist"):
        read_calibration_jsonl(tmp_path / "nope.jsonl")
