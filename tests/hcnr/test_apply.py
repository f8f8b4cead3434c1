"""apply_patch refuses wrong models and damaged patches by error type, and writes nothing when it does."""

from __future__ import annotations

import pytest

from surgery.apply import apply_patch
from surgery.errors import FingerprintMismatch, PatchFormatError
from surgery.hcnr.pipeline import make_patch


@pytest.fixture()
def patch(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    out = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, out)
    return out


def test_the_wrong_model_is_a_fingerprint_mismatch(tiny_pair, patch, tmp_path):
    base, _, _ = tiny_pair
    out = tmp_path / "wrong"
    with pytest.raises(FingerprintMismatch, match="another model"):
        apply_patch(str(base), patch, out)  # the base is not the model the patch was made for
    assert not out.exists()


def test_damaged_patches_are_patch_format_errors(tiny_pair, patch, tmp_path):
    _, sft, _ = tiny_pair
    data = patch.read_bytes()
    truncated, damaged = tmp_path / "t.safetensors", tmp_path / "d.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    damaged.write_bytes(data[:-16] + bytes(16))  # the last values no longer match their fingerprint
    for bad, words in (
        (truncated, "corrupt or truncated"),
        (damaged, "damaged"),
        (sft / "model.safetensors", "not a surgery patch"),
        (tmp_path / "none", "does not exist"),
    ):
        out = tmp_path / ("out-" + bad.stem)
        with pytest.raises(PatchFormatError, match=words):
            apply_patch(str(sft), bad, out)
        assert not out.exists()


def test_apply_records_the_patch_in_its_provenance(tiny_pair, patch, tmp_path):
    _, sft, _ = tiny_pair
    info = apply_patch(str(sft), patch, tmp_path / "out")
    assert info["tensors_patched"] > 0 and info["parameters_changed"] > 0
    assert info["patch_base"].endswith("llama")
