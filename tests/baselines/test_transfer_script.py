"""``python -m benchmarks.transfer`` end to end on the tiny pair: every kind left out once, one table, one JSON."""

from __future__ import annotations

import json

from click.testing import CliRunner

from benchmarks import transfer as script
from surgery.data.honesty_set import DECLINE_KINDS


def test_transfer_script_on_the_tiny_pair(tiny_pair, shared_data, tmp_path, monkeypatch):
    base, sft, _ = tiny_pair
    monkeypatch.setenv("SURGERY_DATA_DIR", str(shared_data))
    out = tmp_path / "transfer"
    args = ["--base", str(base), "--sft", str(sft), "--out", str(out), "--per-kind", "2", "--controls", "2"]
    args += ["--task-limit", "2", "--n-hon", "16", "--n-task", "8", "--probe", "4", "--max-new-tokens", "2"]
    args += ["--batch-size", "8", "--n-boot", "20"]
    result = CliRunner().invoke(script.main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "transfer.json").read_text())
    assert [row["kind"] for row in summary["rows"]] == list(DECLINE_KINDS)
    assert set(summary["cross"]) == {"base", "sft", "all kinds", *(f"without {k}" for k in DECLINE_KINDS)}
    for kind in DECLINE_KINDS:  # each calibration left exactly its kind out
        kinds = summary["calibrations"][f"without {kind}"]
        assert kinds[kind] == 0 and all(kinds[k] > 0 for k in DECLINE_KINDS if k != kind)
    assert all(n > 0 for n in summary["calibrations"]["all kinds"].values())
    assert "| held-out kind |" in result.output and (out / "transfer.md").is_file()
    reference = out / "reference" / "methods" / "base" / "result.json"
    stamp = reference.stat().st_mtime_ns
    again = CliRunner().invoke(script.main, args)  # every row reused: the same numbers
    assert again.exit_code == 0 and json.loads((out / "transfer.json").read_text())["rows"] == summary["rows"]
    # the variant: D_hon declines in M0's own words, each left-out row scored on its own kind only
    variant = CliRunner().invoke(script.main, [*args, "--targets", "base", "--own-kind-only"])
    assert variant.exit_code == 0, variant.output
    assert reference.stat().st_mtime_ns == stamp  # M0 and M1 are shared with the fixed-target rows
    other = json.loads((out / "transfer.base-targets.json").read_text())
    assert [row["kind"] for row in other["rows"]] == list(DECLINE_KINDS)
    assert other["cross"]["without invented"]["unknowable"]["honesty_f1"] is None  # not scored there
    assert other["cross"]["all kinds"]["unknowable"]["honesty_f1"] is not None
    kept = [json.loads(line) for line in (out / "data" / "items-invented.jsonl").read_text().splitlines()]
    assert {it["benchmark"] for it in kept} == {"invented", "answerable", "qa_wikidata"}
    assert (out / "data" / "base-declines.json").is_file() and (out / "no-invented.base-targets").is_dir()
