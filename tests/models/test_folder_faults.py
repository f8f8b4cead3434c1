"""Fault injection on model folders: a damaged folder gives one sentence and exit 2 from check, patch and apply.

Each case copies a tiny model pair, damages the copy, and drives the CLI; it asserts exit 2, exactly one
``error: `` line on stderr with no traceback, nothing at the destination and every input byte-unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import write_calibration
from safetensors.torch import load_file, save_file

from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from tests.support.faults import assert_refused, cli, patch_args
from tests.support.tiny import perturb_columns

FAST = PatchOptions(compensation="none")


@pytest.fixture(scope="module")
def pristine(tiny_models, tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(base, sft, honesty data, task data) of a tiny Llama pair; copied before any damage."""
    base = tiny_models("llama")
    root = tmp_path_factory.mktemp("faults")
    sft = root / "sft"
    perturb_columns(base, sft)
    hon, task = write_calibration(root / "calib")
    return base, sft, hon, task


@pytest.fixture(scope="module")
def good_patch(pristine, tmp_path_factory) -> Path:
    base, sft, hon, task = pristine
    out = tmp_path_factory.mktemp("patch") / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, out, FAST)
    return out


@pytest.fixture
def pair(pristine, tmp_path) -> tuple[Path, Path]:
    base, sft, _, _ = pristine
    shutil.copytree(base, tmp_path / "base")
    shutil.copytree(sft, tmp_path / "sft")
    return tmp_path / "base", tmp_path / "sft"


def _all_three(pair: tuple[Path, Path], pristine, good_patch: Path, tmp_path: Path, words: tuple[str, ...]) -> None:
    """The damaged SFT is refused by check, patch and apply alike."""
    base, sft = pair
    _, _, hon, task = pristine
    inputs = [base, sft, hon, task, good_patch]
    assert_refused(["check", str(sft), "--base", str(base)], inputs, None, words=words)
    out = tmp_path / "out.safetensors"
    assert_refused(
        ["patch", str(sft), "--base", str(base), "--honesty-data", str(hon), "--task-data", str(task), "-o", str(out)],
        inputs,
        out,
        words=words,
    )
    assert_refused(
        ["apply", str(sft), str(good_patch), "-o", str(tmp_path / "repaired")],
        inputs,
        tmp_path / "repaired",
        words=words,
    )


def _shard(sft: Path) -> Path:
    return sft / "model.safetensors"


def _reshard(sft: Path, names: dict[str, str]) -> None:
    """Split the SFT into two shards and write an index whose entries the case then edits."""
    tensors = load_file(str(_shard(sft)))
    keys = sorted(tensors)
    half = len(keys) // 2
    save_file({k: tensors[k] for k in keys[:half]}, str(sft / "a.safetensors"), metadata={"format": "pt"})
    save_file({k: tensors[k] for k in keys[half:]}, str(sft / "b.safetensors"), metadata={"format": "pt"})
    _shard(sft).unlink()
    weight_map = {k: names.get("a", "a.safetensors") for k in keys[:half]}
    weight_map.update({k: names.get("b", "b.safetensors") for k in keys[half:]})
    (sft / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _write_index(sft: Path, text: str | bytes) -> None:
    _reshard(sft, {})
    p = sft / "model.safetensors.index.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())


def _config_not_json(sft: Path) -> None:
    (sft / "config.json").write_text('{"model_type": "llama", ')


def _config_not_object(sft: Path) -> None:
    (sft / "config.json").write_text("[1, 2, 3]")


def _config_not_utf8(sft: Path) -> None:
    (sft / "config.json").write_bytes(b'{"model_type": "\xff\xfe"}')


def _index_not_json(sft: Path) -> None:
    _write_index(sft, "{weight_map: ")


def _index_no_weight_map(sft: Path) -> None:
    _write_index(sft, json.dumps({"metadata": {}}))


def _index_non_string_entry(sft: Path) -> None:
    _reshard(sft, {})
    p = sft / "model.safetensors.index.json"
    data = json.loads(p.read_text())
    first = sorted(data["weight_map"])[0]
    data["weight_map"][first] = 7
    p.write_text(json.dumps(data))


def _index_not_utf8(sft: Path) -> None:
    _write_index(sft, b"\xff\xfe{}")


def _truncated_data(sft: Path) -> None:
    data = _shard(sft).read_bytes()
    _shard(sft).write_bytes(data[: len(data) - 100])


def _truncated_header(sft: Path) -> None:
    data = _shard(sft).read_bytes()
    _shard(sft).write_bytes(data[:40])


def _header_garbage(sft: Path) -> None:
    data = bytearray(_shard(sft).read_bytes())
    data[8:20] = b"\x00\xff" * 6
    _shard(sft).write_bytes(bytes(data))


def _wrong_hidden_size(sft: Path) -> None:
    cfg = json.loads((sft / "config.json").read_text())
    cfg["hidden_size"] = cfg["hidden_size"] * 2
    (sft / "config.json").write_text(json.dumps(cfg))


FOLDER_FAULTS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "config-not-json": (_config_not_json, ("config.json", "not valid JSON")),
    "config-not-object": (_config_not_object, ("config.json", "not a JSON object")),
    "config-not-utf8": (_config_not_utf8, ("config.json", "UTF-8")),
    "index-not-json": (_index_not_json, ("model.safetensors.index.json",)),
    "index-no-weight-map": (_index_no_weight_map, ("weight_map",)),
    "index-non-string-entry": (_index_non_string_entry, ("weight_map",)),
    "index-not-utf8": (_index_not_utf8, ("model.safetensors.index.json", "UTF-8")),
    "safetensors-data-cut": (_truncated_data, ("model.safetensors", "truncated")),
    "safetensors-header-cut": (_truncated_header, ("model.safetensors",)),
    "safetensors-header-garbage": (_header_garbage, ("model.safetensors",)),
}


@pytest.mark.fault("folder")
@pytest.mark.parametrize("case", sorted(FOLDER_FAULTS))
def test_damaged_sft_folder_is_one_sentence_everywhere(case, pair, pristine, good_patch, tmp_path):
    damage, words = FOLDER_FAULTS[case]
    damage(pair[1])
    _all_three(pair, pristine, good_patch, tmp_path, words)


@pytest.mark.fault("folder")
def test_shape_disagreeing_with_config_isassert_refused(pair, pristine, good_patch, tmp_path):
    """Both configs say a wider model than the tensors are: the tensor and the config are named."""
    for folder in pair:
        _wrong_hidden_size(folder)
    _all_three(pair, pristine, good_patch, tmp_path, ("hidden_size", "config.json"))


@pytest.mark.fault("folder")
def test_adapter_config_not_json(pair, pristine, good_patch, tmp_path):
    (pair[1] / "adapter_config.json").write_text("{not json")
    _all_three(pair, pristine, good_patch, tmp_path, ("adapter_config.json",))


@pytest.mark.fault("folder")
def test_adapter_config_not_object(pair, pristine, good_patch, tmp_path):
    (pair[1] / "adapter_config.json").write_text('"a string"')
    _all_three(pair, pristine, good_patch, tmp_path, ("adapter_config.json", "not a JSON object"))


@pytest.mark.fault("folder")
@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_index_entry_outside_the_folder_isassert_refused(where, pair, pristine, good_patch, tmp_path):
    sft = pair[1]
    outside = tmp_path / "elsewhere.safetensors"
    name = "../elsewhere.safetensors" if where == "dotdot" else str(outside)
    _reshard(sft, {"b": name})
    os.replace(sft / "b.safetensors", outside)
    _all_three(pair, pristine, good_patch, tmp_path, ("outside the folder",))


@pytest.mark.fault("folder")
def test_symlinked_shard_escaping_the_folder_isassert_refused(pair, pristine, good_patch, tmp_path):
    sft = pair[1]
    outside = tmp_path / "stash"
    outside.mkdir()
    os.replace(_shard(sft), outside / "model.safetensors")
    _shard(sft).symlink_to(outside / "model.safetensors")
    _all_three(pair, pristine, good_patch, tmp_path, ("outside the model folder",))


@pytest.mark.fault("folder")
def test_pickle_shard_in_index_needs_allow_pickle(pair, pristine, good_patch, tmp_path):
    sft = pair[1]
    _reshard(sft, {"b": "b.bin"})
    torch.save(load_file(str(sft / "b.safetensors")), str(sft / "b.bin"))
    (sft / "b.safetensors").unlink()
    _all_three(pair, pristine, good_patch, tmp_path, ("pickle", "--allow-pickle"))


def _poison(sft: Path, name: str | None = None) -> str:
    tensors = load_file(str(_shard(sft)))
    name = name or sorted(k for k in tensors if k.endswith("mlp.down_proj.weight"))[0]
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(_shard(sft)), metadata={"format": "pt"})
    return name


@pytest.mark.fault("folder")
def test_nan_weight_is_reported_by_check(pair, tmp_path):
    base, sft = pair
    name = _poison(sft)
    report = tmp_path / "check.json"
    res = cli("check", str(sft), "--base", str(base), "--json", str(report))
    assert "Traceback" not in res.output
    assert name in res.output and "NaN" in res.output, res.output
    assert json.loads(report.read_text())["nonfinite"] == [name]


@pytest.mark.fault("folder")
def test_nan_weight_is_refused_by_patch_and_apply(pair, pristine, good_patch, tmp_path):
    name = _poison(pair[1])
    base, sft = pair
    _, _, hon, task = pristine
    inputs = [base, sft, hon, task, good_patch]
    out = tmp_path / "out.safetensors"
    args = patch_args(sft, base, hon, task, out)
    assert_refused(args, inputs, out, words=(name, "NaN"))
    assert_refused(
        ["apply", str(sft), str(good_patch), "-o", str(tmp_path / "r")], inputs, tmp_path / "r", words=(name,)
    )


@pytest.mark.fault("folder")
def test_inf_in_base_is_refused_by_patch(pair, pristine, tmp_path):
    base, sft = pair
    tensors = load_file(str(_shard(base)))
    name = sorted(k for k in tensors if k.endswith("self_attn.q_proj.weight"))[0]
    tensors[name][1, 1] = float("inf")
    save_file(tensors, str(_shard(base)), metadata={"format": "pt"})
    _, _, hon, task = pristine
    out = tmp_path / "out.safetensors"
    args = patch_args(sft, base, hon, task, out)
    assert_refused(args, [base, sft, hon, task], out, words=(name, "base"))


@pytest.mark.fault("folder")
def test_patch_refuses_a_different_architecture_of_the_same_shapes(pair, pristine, tmp_path):
    """A Llama base with a "Qwen2" SFT of identical tensor shapes: patch refuses it as check does."""
    base, sft = pair
    cfg = json.loads((sft / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "qwen2", ["Qwen2ForCausalLM"]
    (sft / "config.json").write_text(json.dumps(cfg))
    _, _, hon, task = pristine
    out = tmp_path / "out.safetensors"
    args = patch_args(sft, base, hon, task, out)
    assert_refused(args, [base, sft, hon, task], out, words=("model_type",))
    assert_refused(["check", str(sft), "--base", str(base)], [base, sft], None, words=("model_type",))
