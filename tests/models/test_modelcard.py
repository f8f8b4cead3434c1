"""The model card ``apply`` and ``deploy`` write: hub metadata that parses, the facts, nothing a stranger can inject.

:func:`surgery.modelcard.build_card` is tested as the pure function it is (on a hand-made manifest, including
hostile strings); ``apply`` and ``deploy`` are tested to write it without changing a weight byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from surgery.cli import main
from surgery.errors import PatchFormatError, SurgeryError
from surgery.modelcard import EvalRow, Evaluation, build_card, load_eval_results
from surgery.patchfile import PatchManifest, PatchStats, read_manifest
from surgery.revision import check_revisions
from surgery.safetext import printable

HUB_BASE = {"kind": "hub", "repo": "acme/base", "commit": "a" * 40}
HUB_SFT = {"kind": "hub", "repo": "acme/sft", "commit": "b" * 40}
FOLDER = {"kind": "folder", "sha256": "c" * 64, "files": 5}
SURGERY_EVAL = {
    "model": "repaired/",
    "items": [],
    "metrics": {
        "per_benchmark": {
            "selfaware": {"kind": "honesty", "n": 300, "honesty_f1": 0.6123, "refusal_unanswerable": 0.5,
                          "refusal_answerable": 0.1, "accuracy": 0.4},
            "task_qa": {"kind": "task", "n": 50, "accuracy": 0.8, "task_accuracy": 0.8, "honesty_f1": None},
            "empty": {"kind": "honesty", "n": 0, "honesty_f1": None},
        },
        "average": {"honesty_f1": 0.6123},
    },
}  # fmt: skip


def _manifest(**changes) -> PatchManifest:
    stats = PatchStats(
        parameters_changed=1000,
        share_of_linear=0.05,
        share_of_model=0.02,
        linear_parameters=20000,
        model_parameters=50000,
        matrices_total=14,
        matrices_touched=6,
        fallbacks=[],
        hessian_tokens=10,
        hessian_groups=2,
        residual_ratio=0.1,
        per_matrix={},
        unit_scores={},
    )
    m = PatchManifest(
        tool="surgery",
        tool_version="0.1.0",
        method="HCNR",
        base="acme/base",
        sft="acme/sft",
        options={"compensation": "protect", "r_iw": 0.125},
        calibration={"honesty": {"file": "hon.jsonl", "sha256": "d" * 64, "bytes": 10}},
        stats=stats,
        revisions={"base": HUB_BASE, "sft": HUB_SFT},
    )
    return dataclasses.replace(m, **changes)


def _header(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_header_is_hugging_face_metadata(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(SURGERY_EVAL))
    card = build_card(
        _manifest(), name="me/fixed", sft="acme/sft", patch="p.safetensors", evaluation=load_eval_results(path)
    )
    meta = _header(card)
    assert meta["base_model"] == ["acme/sft", "acme/base"] and meta["base_model_relation"] == "merge"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"surgery", "hcnr", "safetensors"} <= set(meta["tags"])
    results = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "me/fixed"
    assert [r["dataset"]["name"] for r in results] == ["selfaware", "task_qa"]  # "empty" has no numbers
    f1 = next(m for m in results[0]["metrics"] if m["type"] == "honesty_f1")
    assert f1["value"] == 0.6123
    assert "| selfaware | honesty | 300 | 61.2 | 50.0 | 10.0 | 40.0 |" in card
    assert "| task\\_qa | task | 50 | – | – | – | 80.0 |" in card
    assert f"hub acme/base@{'a' * 40}" in card and "5.00% of the linear weights" in card


def test_the_card_is_a_pure_function_of_its_facts():
    kwargs = dict(name="out", sft="/models/sft", patch="p.safetensors", command="surgery apply a b -o out")
    assert build_card(_manifest(), **kwargs) == build_card(_manifest(), **kwargs)
    assert build_card(_manifest(), **kwargs) != build_card(_manifest(), **{**kwargs, "command": "other"})


def test_only_hub_models_are_named_as_base_model():
    local = _manifest(revisions={"base": FOLDER, "sft": FOLDER})
    meta = _header(build_card(local, name="out", sft="/models/sft", patch="p"))
    assert "base_model" not in meta and "base_model_relation" not in meta
    one = _manifest(revisions={"base": HUB_BASE, "sft": FOLDER})
    meta = _header(build_card(one, name="out", sft="/models/sft", patch="p"))
    assert meta["base_model"] == ["acme/base"] and "base_model_relation" not in meta
    # an older patch without revisions still gets a card
    meta = _header(build_card(_manifest(revisions=None), name="out", sft="s", patch="p", artefact="onnx"))
    assert meta["library_name"] == "onnx" and "onnx" in meta["tags"]


def test_hostile_manifest_strings_cannot_inject_metadata_markup_or_control_sequences():
    evil = 'x\n---\nlicense: evil\n| a | b |\n```\n\x1b]0;owned\x07<script>"'
    m = _manifest(base=evil, method=evil, options={evil: evil}, tool_version=evil)
    ev = Evaluation(evil, [EvalRow(evil, "honesty", 3, {"honesty_f1": 0.5})])
    card = build_card(
        m, name=evil, sft=evil, patch=evil, command="surgery apply " + evil, patch_command=evil, evaluation=ev
    )
    assert printable(card.replace("\n", "")) == card.replace("\n", "")  # no control character anywhere
    meta = _header(card)
    assert "license" not in meta and meta["base_model"] == ["acme/sft", "acme/base"]
    assert meta["model-index"][0]["name"] == printable(evil)
    assert card.count("\n---\n") == 1  # the header's end, nothing more
    body = card.split("\n---\n", 1)[1]
    prose = re.sub(r"(`{3,})\w*\n.*?\n\1", "", body, flags=re.S)  # markup outside code blocks is what renders
    assert "<script>" not in prose and "| a | b |" not in prose
    fences = [line for line in card.splitlines() if line.startswith("```")]
    assert len(fences) == 4 and all(len(f.rstrip("abhnoptsy")) == 4 for f in fences)  # longer than the ``` inside
    assert not any(line.startswith("license:") for line in card.splitlines())


def test_revisions_in_a_manifest_are_checked_as_hostile_input():
    assert check_revisions({"base": HUB_BASE, "sft": FOLDER}, "m") == {"base": HUB_BASE, "sft": FOLDER}
    bad = [
        [],
        {"owner": HUB_BASE},
        {"base": {"kind": "git", "commit": "a" * 40}},
        {"base": {**HUB_BASE, "commit": "A" * 40}},
        {"base": {**HUB_BASE, "commit": "a" * 41}},
        {"base": {**HUB_BASE, "repo": "acme/base@main"}},
        {"base": {**HUB_BASE, "repo": "../../etc"}},
        {"base": {**HUB_BASE, "repo": "a/" + "b" * 200}},
        {"base": {**HUB_BASE, "extra": "x" * 10_000}},
        {"base": {**FOLDER, "files": True}},
        {"base": {**FOLDER, "files": -1}},
        {"base": {**FOLDER, "files": 10**30}},
        {"base": {**FOLDER, "sha256": "c" * 63}},
        {f"r{i}": FOLDER for i in range(5)},
    ]
    for value in bad:
        with pytest.raises(PatchFormatError, match="damaged"):
            check_revisions(value, "m")
    with pytest.raises(PatchFormatError):
        PatchManifest.from_dict({**_manifest().to_dict(), "revisions": {"base": "acme/base"}}, "m")
    assert PatchManifest.from_dict(_manifest().to_dict(), "m").revisions == {"base": HUB_BASE, "sft": HUB_SFT}


def test_eval_results_files_are_read_or_refused_in_one_sentence(tmp_path):
    lm_eval = {
        "results": {"surgery_selfaware": {"alias": "x", "honesty_f1,none": 0.7, "honesty_f1_stderr,none": 0.02}},
        "config": {"model_args": "pretrained=repaired"},
    }
    path = tmp_path / "lm.json"
    path.write_text(json.dumps(lm_eval))
    ev = load_eval_results(path)
    assert ev.model == "pretrained=repaired" and ev.rows[0].metrics["honesty_f1"] == 0.7
    for text in ("{", "[]", json.dumps({"metrics": {"per_benchmark": {"a": {"honesty_f1": "high"}}}})):
        path.write_text(text)
        with pytest.raises(SurgeryError, match="--eval-results"):
            load_eval_results(path)
    with pytest.raises(SurgeryError, match="Could not read"):
        load_eval_results(tmp_path / "absent.json")


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _run(*args: str):
    return CliRunner().invoke(main, ["-q", "--threads", "1", *args], catch_exceptions=False)


def test_apply_writes_the_card_beside_the_same_weights(tiny_pair, calib, tmp_path):
    from surgery.hcnr.pipeline import make_patch

    base, sft, _ = tiny_pair
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), *calib, patch)
    (tmp_path / "p.safetensors.command.txt").write_text("surgery patch sft --base base -o p.safetensors\n")
    assert read_manifest(patch).revisions["base"]["kind"] == "folder"
    result = tmp_path / "eval.json"
    result.write_text(json.dumps(SURGERY_EVAL))
    plain, carded = tmp_path / "plain", tmp_path / "carded"
    assert _run("apply", str(sft), str(patch), "-o", str(plain)).exit_code == 0
    res = _run("apply", str(sft), str(patch), "-o", str(carded), "--eval-results", str(result))
    assert res.exit_code == 0, res.output
    a, b = _digests(plain), _digests(carded)
    assert set(a) == set(b) and "README.md" in a
    assert {k: v for k, v in a.items() if k != "README.md"} == {k: v for k, v in b.items() if k != "README.md"}
    card = (carded / "README.md").read_text()
    assert "## Measured" in card and "## Measured" not in (plain / "README.md").read_text()
    made = re.search(r"```bash\n(.*?)\n```", card, re.S)
    assert made is not None
    assert made.group(1).splitlines() == [
        "surgery patch sft --base base -o p.safetensors",
        f"surgery apply {sft} {patch} --output {carded} --max-shard-size 2GiB",
    ]
    revision = read_manifest(patch).revisions["sft"]["sha256"]
    assert revision in card


def test_a_bad_eval_results_file_stops_apply_before_it_writes(tiny_pair, tmp_path):
    _, sft, _ = tiny_pair
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    res = _run(
        "apply", str(sft), str(tmp_path / "p.safetensors"), "-o", str(tmp_path / "o"), "--eval-results", str(bad)
    )
    assert res.exit_code == 2 and "holds no benchmark numbers" in res.output and not (tmp_path / "o").exists()


@pytest.mark.onnx
def test_deploy_writes_an_onnx_card(tiny_pair, calib, tmp_path):
    pytest.importorskip("optimum.onnxruntime", reason="needs the [onnx] extra")
    from surgery.hcnr.pipeline import make_patch

    base, sft, _ = tiny_pair
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), *calib, patch)
    out = tmp_path / "deployed"
    res = _run("deploy", str(sft), str(patch), "-o", str(out), "--greedy-tokens", "2")
    assert res.exit_code == 0, res.output
    card = (out / "README.md").read_text()
    meta = _header(card)
    assert meta["library_name"] == "onnx" and {"surgery", "onnx"} <= set(meta["tags"])
    assert f"surgery deploy {sft} {patch} -o {out} --verify --greedy-tokens 2" in card
    assert "surgery eval deployed --backend onnx" in card
