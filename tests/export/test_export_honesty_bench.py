"""benchmarks/export_honesty.py: what it reuses from an earlier run and how it names the int4 rows."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import export_honesty as bench
from surgery.evaluation.benchmarks import Item
from surgery.export.options import DEFAULT_INT4_KEEP_8BIT, ExportOptions


def _items(*ids: str) -> list[Item]:
    return [Item(id=i, benchmark="selfaware", question=f"q {i}?", answerable=True) for i in ids]


def test_a_saved_evaluation_of_other_items_is_not_reused(tmp_path: Path) -> None:
    """The cache file is named by the item count only: another data folder gives other items of that count
    (the bundled samples instead of ../shared/data), and their answers must not be paired with these."""
    saved = tmp_path / "eval-int4-plain-2.json"
    records = [{"id": "a", "response": "x"}, {"id": "b", "response": "y"}]
    saved.write_text(json.dumps({"items": records, "metrics": {}}))
    assert bench._saved_result(saved, _items("a", "b")) is not None
    assert bench._saved_result(saved, _items("a", "c")) is None
    assert bench._saved_result(saved, _items("b", "a")) is None  # paired by position in the row builder
    assert bench._saved_result(tmp_path / "missing.json", _items("a")) is None


def test_int4_rows_name_the_method_and_the_8bit_share_unless_they_are_the_defaults(tmp_path: Path, monkeypatch) -> None:
    """--int4-method x --int4-mix: the export's defaults keep the plain 'int4' names, every other row says
    what differs; each row's options reach the quantizer."""
    made: dict[str, ExportOptions] = {}

    def fake_quantize(folder: Path, options: ExportOptions) -> dict:
        made[folder.name] = options
        return {}

    def fake_export(src: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "model.onnx").write_text("graph")

    monkeypatch.setattr(bench, "quantize_folder", fake_quantize)
    monkeypatch.setattr(bench, "export_onnx", fake_export)
    run = bench.ExportHonestyRun(
        sft="sft",
        patch=tmp_path / "p",
        work=tmp_path,
        int8_method=(),
        int4_scale=(),
        int4_method=("rtn-asym", "rtn"),
        int4_mix=("default", "none", "down_proj,o_proj"),
    )
    labels = list(bench._exports(run, tmp_path / "patched"))
    assert labels == [
        bench.ORT_FP32,
        "int4 plain",
        "int4 all 4-bit plain",
        "int4 8-bit down_proj+o_proj plain",
        "int4 rtn plain",
        "int4 rtn all 4-bit plain",
        "int4 rtn 8-bit down_proj+o_proj plain",
    ]
    keeps = {name: (o.int4_method, o.keep_8bit) for name, o in made.items()}
    assert keeps["onnx-int4-plain"] == ("rtn-asym", DEFAULT_INT4_KEEP_8BIT)
    assert keeps["onnx-int4-all-4-bit-plain"] == ("rtn-asym", ())
    assert keeps["onnx-int4-rtn-8-bit-down-proj-o-proj-plain"] == ("rtn", ("down_proj", "o_proj"))
