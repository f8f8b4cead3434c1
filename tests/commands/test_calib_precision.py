"""``surgery calib --model M --dtype bfloat16`` probes in bf16 and says so in calibration.json."""

from __future__ import annotations

import json

from click.testing import CliRunner

from surgery.cli import main


def _calib(out, data, *extra):
    args = ["-q", "--threads", "1", "calib", "-o", str(out), "--data-dir", str(data), "--n-hon", "8", "--n-task", "4"]
    result = CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((out / "calibration.json").read_text())


def test_calib_records_the_probing_precision(tiny_models, shared_data, tmp_path):
    model = str(tiny_models("llama"))
    f32 = _calib(tmp_path / "f32", shared_data, "--model", model, "--probe", "6", "--device", "cpu")
    bf16 = _calib(tmp_path / "bf16", shared_data, "--model", model, "--probe", "6", "--dtype", "bfloat16")
    none = _calib(tmp_path / "none", shared_data)
    assert f32["precision"] == {"device": "cpu", "dtype": "float32"}
    assert bf16["precision"]["dtype"] == "bfloat16"
    assert "precision" not in none  # no model was run
    assert f32["probe_model"] == model and f32["honesty"]["n"] == bf16["honesty"]["n"] == 8
    assert (tmp_path / "bf16" / "d_hon.jsonl").is_file()
