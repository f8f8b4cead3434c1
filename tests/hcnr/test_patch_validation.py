"""A patch from a stranger: every hostile variant of a valid patch is refused before any model is touched.

One valid patch is made on the tiny pair; each case rewrites its safetensors file (tensors and the manifest in
``__metadata__['manifest']``) and, where the change leaves the splice computable, recomputes the fingerprints the
way an attacker would, so that only the new validation can catch it. Each case asserts that ``surgery apply``
exits 2 with one ``error: `` line on stderr and no traceback, that nothing is left at the destination, that the
SFT folder and the patch are byte-unchanged, and that ``surgery inspect`` prints no control character.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from conftest import write_calibration
from safetensors import safe_open
from safetensors.torch import load_file

from surgery.apply import apply_patch
from surgery.errors import ArchitectureMismatch, ModelFolderError, PatchFormatError
from surgery.hcnr.pipeline import make_patch
from surgery.modelio import tensor_sha256
from surgery.patchfile import (
    PAYLOAD_KEY,
    _serialize_safetensors,
    _tensor_bytes,
    apply_entry,
    payload_sha256,
    read_manifest,
    read_patch,
    splice,
)
from tests.support.faults import assert_one_error_line, cli, digest

Tensors = dict[str, torch.Tensor]
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Valid:
    """The valid patch's parts: metadata, manifest, tensors, the weight the cases damage and the SFT folder."""

    meta: dict[str, str]
    manifest: Manifest
    tensors: Tensors
    weight: str
    sft: Path
    sft_tensors: Tensors


@pytest.fixture(scope="module")
def valid(tiny_pair, tmp_path_factory) -> Valid:
    base, sft, _ = tiny_pair
    root = tmp_path_factory.mktemp("validation")
    hon, task = write_calibration(root / "calib")
    path = root / "valid.safetensors"
    make_patch(str(sft), str(base), hon, task, path)
    with safe_open(str(path), framework="pt") as h:
        meta = dict(h.metadata())
        tensors = {k: h.get_tensor(k).clone() for k in h.keys()}
    manifest = json.loads(meta["manifest"])
    # a non-square matrix with at least two columns, so every damage below is meaningful
    weight = next(
        w
        for w, r in sorted(manifest["tensors"].items())
        if r["unit"] == "cols" and r["count"] >= 2 and r["shape"][0] != r["shape"][1]
    )
    return Valid(meta, manifest, tensors, weight, sft, load_file(str(sft / "model.safetensors")))


def _old_splice(w: torch.Tensor, record: Manifest, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The splice as it was before validation (no checks): what a forged fingerprint is computed with."""
    w = w.clone()
    canon = w.t() if record["transposed"] is True else w
    if record["unit"] == "cols":
        canon[:, index.long()] = values.to(w.dtype)
    else:
        canon[index.long(), :] = values.to(w.dtype)
    return w


def _forge_fingerprints(valid: Valid, manifest: Manifest, tensors: Tensors) -> None:
    """Recompute every ``patched_sha256`` the damaged tensors would produce, where the old splice computes one."""
    for weight, record in manifest.get("tensors", {}).items():
        try:
            index, values = tensors[f"{weight}::{record['unit']}"], tensors[f"{weight}::values"]
            patched = _old_splice(valid.sft_tensors[weight], record, index, values)
        except (KeyError, TypeError, IndexError, RuntimeError, ValueError):
            continue  # the old code could not splice this either
        record["patched_sha256"] = tensor_sha256(patched)


def _write(path: Path, valid: Valid, damage: Callable[[Manifest, Tensors, str], None] | None) -> Path:
    manifest = json.loads(json.dumps(valid.manifest))
    tensors = {k: v.clone() for k, v in valid.tensors.items()}
    if damage is not None:
        damage(manifest, tensors, valid.weight)
        _forge_fingerprints(valid, manifest, tensors)
    raw = manifest.pop(RAW, {})
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    for marker, replacement in raw.items():  # JSON that json.dumps would not write
        text = text.replace(json.dumps(marker), replacement)
    # the payload digest recomputed too, as an attacker would: only the other checks can catch these cases
    meta = {
        **valid.meta,
        "manifest": text,
        PAYLOAD_KEY: payload_sha256(_tensor_bytes(tensors[n]) for n in sorted(tensors)),
    }
    path.write_bytes(_serialize_safetensors(tensors, meta))
    return path


def _cols(t: Tensors, w: str) -> torch.Tensor:
    return t[f"{w}::cols"]


def _set_index(t: Tensors, w: str, index: torch.Tensor) -> None:
    t[f"{w}::cols"] = index


def _in_dim(m: Manifest, w: str) -> int:
    return int(m["tensors"][w]["shape"][1])


def _nan(m: Manifest, t: Tensors, w: str) -> None:
    t[f"{w}::values"][0, 0] = float("nan")


def _inf(m: Manifest, t: Tensors, w: str) -> None:
    t[f"{w}::values"][-1, -1] = float("-inf")


def _unsorted(m: Manifest, t: Tensors, w: str) -> None:
    idx, vals = _cols(t, w), t[f"{w}::values"]
    _set_index(t, w, idx[[1, 0, *range(2, idx.numel())]].contiguous())
    t[f"{w}::values"] = vals[:, [1, 0, *range(2, idx.numel())]].contiguous()


def _duplicated(m: Manifest, t: Tensors, w: str) -> None:
    idx, vals = _cols(t, w).clone(), t[f"{w}::values"]
    idx[1] = idx[0]
    vals[:, 1] = vals[:, 0]
    _set_index(t, w, idx)


def _drop_from_manifest(m: Manifest, t: Tensors, w: str) -> None:
    del m["tensors"][w]


def _drop_all_tensors(m: Manifest, t: Tensors, w: str) -> None:
    t.clear()


def _empty_patch(m: Manifest, t: Tensors, w: str) -> None:
    t.clear()
    m["tensors"] = {}


def _rename(m: Manifest, t: Tensors, w: str) -> None:
    """A weight renamed, in the manifest and the file, to a name carrying control sequences."""
    evil = "\x1b]0;owned\x07\x1b[2J" + w
    m["tensors"][evil] = m["tensors"].pop(w)
    for kind in ("cols", "values"):
        t[f"{evil}::{kind}"] = t.pop(f"{w}::{kind}")


#: manifest key of text replacements made after serialisation (see :func:`_raw`)
RAW = "raw-json"


def _raw(where: str, json_text: str) -> Callable[[Manifest, Tensors, str], None]:
    """Put ``json_text`` (written as is) into the manifest's ``where`` field of the options."""
    marker = f"@@{where}@@"
    return lambda m, t, w: m.update({"options": {**m["options"], where: marker}, RAW: {marker: json_text}})


def _record(field: str, value: Any) -> Callable[[Manifest, Tensors, str], None]:
    return lambda m, t, w: m["tensors"][w].update({field: value})


def _stats(field: str, value: Any) -> Callable[[Manifest, Tensors, str], None]:
    return lambda m, t, w: m["stats"].update({field: value})


#: case -> (damage, whether the manifest alone is invalid, so that `inspect` refuses it too)
REFUSED: dict[str, tuple[Callable[[Manifest, Tensors, str], None], bool]] = {
    "index_out_of_range": (lambda m, t, w: _cols(t, w).__setitem__(-1, _in_dim(m, w)), False),
    "index_far_out_of_range": (lambda m, t, w: _cols(t, w).__setitem__(-1, 2**30), False),
    "index_negative": (lambda m, t, w: _cols(t, w).__setitem__(0, -1), False),
    "index_unsorted": (_unsorted, False),
    "index_duplicated": (_duplicated, False),
    "index_float": (lambda m, t, w: _set_index(t, w, _cols(t, w).float()), False),
    "index_2d": (lambda m, t, w: _set_index(t, w, _cols(t, w).reshape(1, -1).contiguous()), False),
    "values_one_column_short": (lambda m, t, w: t.update({f"{w}::values": t[f"{w}::values"][:, :-1].clone()}), False),
    "values_transposed": (lambda m, t, w: t.update({f"{w}::values": t[f"{w}::values"].t().contiguous()}), False),
    "values_wrong_dtype": (lambda m, t, w: t.update({f"{w}::values": t[f"{w}::values"].half()}), False),
    "values_nan": (_nan, False),
    "values_inf": (_inf, False),
    "manifest_misses_a_tensor": (_drop_from_manifest, False),
    "stray_tensor": (lambda m, t, w: t.update({"lm_head.weight::values": torch.zeros(2, 2)}), False),
    "all_tensors_dropped": (_drop_all_tensors, False),
    "empty_patch": (_empty_patch, False),
    "transposed_string_false": (_record("transposed", "false"), True),
    "transposed_true_on_a_plain_matrix": (_record("transposed", True), False),
    "shape_not_a_matrix": (_record("shape", [4]), True),
    "count_negative": (_record("count", -1), True),
    "dtype_unknown": (_record("dtype", "\x1b[2Jfloat32"), True),
    "fingerprint_not_hex": (_record("sft_sha256", "\x1b]0;owned\x07"), True),
    "stats_non_numeric": (_stats("share_of_linear", "\x1b]0;owned\x07lots"), True),
    "stats_huge_int": (_stats("parameters_changed", 10**400), True),
    "calibration_not_an_object": (lambda m, t, w: m["calibration"].update(honesty="\x1b[2J"), True),
    "control_sequences_in_a_tensor_name": (_rename, False),
    "manifest_nested_too_deep": (_raw("deep", "[" * 100_000 + "]" * 100_000), True),
    "manifest_integer_too_long": (_raw("long", "9" * 5_000), True),
}


def _assert_printable(res: Result) -> None:
    for text in (res.stdout, res.stderr):
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, repr(text)
    assert "Traceback" not in res.output


def test_the_rewritten_valid_patch_applies(valid, tmp_path):
    """The harness itself: the valid patch, rewritten without damage, applies (so refusals are the damage's)."""
    patch = _write(tmp_path / "p.safetensors", valid, None)
    res = cli("apply", str(valid.sft), str(patch), "-o", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.fault("patch")
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_hostile_patch_is_refused_before_the_model_is_touched(valid, tmp_path, case):
    damage, manifest_invalid = REFUSED[case]
    patch = _write(tmp_path / "p.safetensors", valid, damage)
    patch_bytes, sft_before = patch.read_bytes(), digest([valid.sft])
    dest = tmp_path / "dest"
    dest.mkdir()
    res = cli("apply", str(valid.sft), str(patch), "-o", str(dest / "out"))
    assert_one_error_line(res)
    _assert_printable(res)
    assert list(dest.iterdir()) == []  # no output, no temporary folder
    assert patch.read_bytes() == patch_bytes
    assert digest([valid.sft]) == sft_before
    with pytest.raises(PatchFormatError if case != "control_sequences_in_a_tensor_name" else ArchitectureMismatch):
        manifest, entries = read_patch(patch)
        apply_patch(str(valid.sft), patch, dest / "lib")
    assert not (dest / "lib").exists()
    shown = cli("inspect", str(patch))
    _assert_printable(shown)
    if manifest_invalid:
        assert_one_error_line(shown)
    else:
        assert shown.exit_code == 0, shown.output


#: strings in the manifest that a terminal would obey
HOSTILE_TEXT: dict[str, Callable[[Manifest, Tensors, str], None]] = {
    "base": lambda m, t, w: m.update(base="\x1b]0;owned\x07base-model"),
    "sft": lambda m, t, w: m.update(sft="sft-model\x1b[2J\x1b[H\x1bP+q\x1b\\\x07"),
    "option_value": lambda m, t, w: m["options"].update(device="\x9b2J\x1b]52;c;Y2xpcA==\x07cpu"),
    "option_key": lambda m, t, w: m["options"].update({"\x1b]0;owned\x07key": 1}),
    "tool_version": lambda m, t, w: m.update(tool_version="0\x9b31mred\x1b[0m"),
    "calibration_file": lambda m, t, w: m["calibration"]["honesty"].update(file="hon\x1b]0;owned\x07.jsonl"),
    "fallback": lambda m, t, w: m["stats"].update(fallbacks=["\x1b]0;owned\x07" + w]),
}


@pytest.mark.fault("patch")
@pytest.mark.parametrize("case", sorted(HOSTILE_TEXT))
def test_control_sequences_in_manifest_strings_are_never_printed(valid, tmp_path, case):
    """Strings are only metadata: the patch still applies, and `inspect` prints them without control characters."""
    patch = _write(tmp_path / "p.safetensors", valid, HOSTILE_TEXT[case])
    for args in (["inspect", str(patch)], ["inspect", "--json", str(patch)]):
        shown = cli(*args)
        assert shown.exit_code == 0, shown.output
        _assert_printable(shown)
    res = cli("apply", str(valid.sft), str(patch), "-o", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    _assert_printable(res)
    provenance = json.loads((tmp_path / "out" / "surgery_provenance.json").read_text())
    assert provenance["tensors_patched"] == len(valid.manifest["tensors"])


def test_a_recorded_shape_unlike_the_models_is_an_architecture_mismatch(valid, tmp_path):
    def bigger(m: Manifest, t: Tensors, w: str) -> None:
        m["tensors"][w]["shape"][0] += 1  # more output rows than the model's matrix
        t[f"{w}::values"] = torch.cat([t[f"{w}::values"], t[f"{w}::values"][:1]])

    patch = _write(tmp_path / "p.safetensors", valid, bigger)
    with pytest.raises(ArchitectureMismatch, match="Shape mismatch"):
        apply_patch(str(valid.sft), patch, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_splice_checks_the_tensor_before_writing_into_it(valid, tmp_path):
    patch = _write(tmp_path / "p.safetensors", valid, None)
    _, entries = read_patch(patch)
    entry = next(e for e in entries if e.weight == valid.weight)
    stored = valid.sft_tensors[valid.weight]
    with pytest.raises(ArchitectureMismatch, match="Shape mismatch"):
        splice(stored[:, :-1], entry)
    entry.index[-1] = stored.shape[1]
    with pytest.raises(PatchFormatError, match="outside"):
        splice(stored, entry)


def test_a_model_with_nan_where_the_patch_does_not_write_is_refused(valid, tmp_path):
    """Even with fingerprints made for it, a non-finite spliced result is never returned."""
    patch = _write(tmp_path / "p.safetensors", valid, None)
    _, entries = read_patch(patch)
    entry = next(e for e in entries if e.weight == valid.weight)
    stored = valid.sft_tensors[valid.weight].clone()
    untouched = sorted(set(range(stored.shape[1])) - set(entry.index.tolist()))[0]
    stored[0, untouched] = float("nan")
    entry.sft_sha256 = tensor_sha256(stored)
    with pytest.raises(ModelFolderError, match="NaN or Inf"):
        apply_entry(stored, entry)


# ---------------------------------------------------------------- the payload digest (format version 2)


def _data_start(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


def _with_meta(valid: Valid, path: Path, **changes: str | None) -> Path:
    """The valid patch written with ``__metadata__`` keys changed (None: removed), tensors unchanged."""
    meta = {**valid.meta, PAYLOAD_KEY: payload_sha256(_tensor_bytes(valid.tensors[n]) for n in sorted(valid.tensors))}
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_bytes(_serialize_safetensors(valid.tensors, meta))
    return path


def test_a_written_patch_records_the_digest_of_its_data_section(valid):
    assert valid.meta["format_version"] == "2"
    assert valid.meta[PAYLOAD_KEY] == payload_sha256(_tensor_bytes(valid.tensors[n]) for n in sorted(valid.tensors))


@pytest.mark.fault("patch")
@pytest.mark.parametrize("where", ["first_byte", "middle_byte", "last_byte"])
def test_one_changed_data_byte_is_refused_by_inspect_and_apply(valid, tmp_path, where):
    """Damage in transit is caught by the digest before any tensor is read, by `inspect` too."""
    patch = _with_meta(valid, tmp_path / "p.safetensors")
    raw = bytearray(patch.read_bytes())
    start = _data_start(bytes(raw))
    at = {"first_byte": start, "middle_byte": (start + len(raw)) // 2, "last_byte": len(raw) - 1}[where]
    raw[at] ^= 0x01
    patch.write_bytes(bytes(raw))
    for args in (["inspect", str(patch)], ["apply", str(valid.sft), str(patch), "-o", str(tmp_path / "out")]):
        line = assert_one_error_line(cli(*args))
        assert PAYLOAD_KEY in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.fault("patch")
@pytest.mark.parametrize("digest_value", [None, "", "0" * 63, "\x1b]0;owned\x07" + "0" * 64, "0" * 64])
def test_a_version_2_patch_without_its_digest_is_refused(valid, tmp_path, digest_value):
    patch = _with_meta(valid, tmp_path / "p.safetensors", **{PAYLOAD_KEY: digest_value})
    with pytest.raises(PatchFormatError, match=PAYLOAD_KEY):
        read_manifest(patch)
    res = cli("inspect", str(patch))
    assert_one_error_line(res)
    _assert_printable(res)


def test_a_version_1_patch_without_a_digest_is_still_read_and_validated(valid, tmp_path):
    """Version 1 files predate the digest: they are accepted, and every other check still applies."""
    patch = _with_meta(valid, tmp_path / "p.safetensors", format_version="1", **{PAYLOAD_KEY: None})
    res = cli("apply", str(valid.sft), str(patch), "-o", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    damaged = tmp_path / "nan.safetensors"
    tensors = {k: v.clone() for k, v in valid.tensors.items()}
    tensors[f"{valid.weight}::values"][0, 0] = float("nan")
    v1_meta = {k: v for k, v in valid.meta.items() if k != PAYLOAD_KEY}
    damaged.write_bytes(_serialize_safetensors(tensors, {**v1_meta, "format_version": "1"}))
    with pytest.raises(PatchFormatError, match="NaN"):
        read_patch(damaged)


def test_an_unknown_format_version_is_refused(valid, tmp_path):
    patch = _with_meta(valid, tmp_path / "p.safetensors", format_version="3")
    with pytest.raises(PatchFormatError, match="format version 3"):
        read_manifest(patch)
