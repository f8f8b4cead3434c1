"""Compact patch encodings (bf16, int8): the codec, the file format, hostile encoded files, and round trips
through ``apply`` with the fingerprint check on tiny models of several families."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from surgery.apply import apply_patch
from surgery.convert import convert_patch, reencode_entry
from surgery.errors import OptionError, PatchFormatError
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.patch_encoding import decode_values, encode_delta
from surgery.patchfile import (
    PAYLOAD_KEY,
    PatchManifest,
    _serialize_safetensors,
    _tensor_bytes,
    apply_entry,
    make_entry,
    payload_sha256,
    read_manifest,
    read_patch,
    write_patch,
)
from tests.support.faults import assert_one_error_line, cli

# ---- the codec -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["cols", "rows"])
def test_int8_error_is_at_most_half_a_step_per_neuron(unit):
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(32, 6, generator=g) * torch.tensor([1e-3, 1e-2, 0.1, 1.0, 10.0, 0.0])
    delta = delta if unit == "cols" else delta.t().contiguous()
    q, scale = encode_delta(delta, unit, "int8")
    assert q.dtype == torch.int8 and scale is not None and scale.dtype == torch.float32 and scale.shape == (6,)
    assert int(q.abs().max()) == 127  # the largest entry of a changed neuron uses the whole range
    assert scale[-1] == 0 and not q.select(1 if unit == "cols" else 0, 5).any()  # an unchanged neuron
    sft = torch.randn(*delta.shape, generator=g)
    got = decode_values(sft, q, scale, unit) - sft
    step = scale[None, :] if unit == "cols" else scale[:, None]
    assert bool(((got - delta).abs() <= step / 2 + 1e-6).all())


def test_bf16_delta_keeps_eight_bits_of_mantissa():
    delta = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    stored, scale = encode_delta(delta, "cols", "bf16")
    assert stored.dtype == torch.bfloat16 and scale is None
    assert torch.allclose(stored.float(), delta, rtol=2**-8, atol=0)


# ---- the file format on a synthetic matrix ---------------------------------------------------------------


def _synthetic(tmp_path: Path, unit: str = "cols", transposed: bool = False) -> tuple[Path, torch.Tensor]:
    """A full patch of one (12 x 20) matrix (stored transposed for GPT-2-style) and its SFT tensor."""
    g = torch.Generator().manual_seed(2)
    sft = torch.randn(20, 12, generator=g) if transposed else torch.randn(12, 20, generator=g)
    canon = sft.t() if transposed else sft
    new = canon + 0.05 * torch.randn(canon.shape, generator=g)
    index = torch.tensor([1, 4, 7]) if unit == "cols" else torch.tensor([0, 5])
    entry = make_entry("layers.0.w", sft, new, index, unit, transposed)
    path = tmp_path / f"full-{unit}-{transposed}.safetensors"
    write_patch(path, [entry], PatchManifest("surgery", "test", "HCNR", "base", "sft", {}, {}))
    return path, sft


class _Sft:
    """A one-tensor SFT model for :func:`convert_patch`."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t

    def __contains__(self, name: str) -> bool:
        return name == "layers.0.w"

    def get(self, name: str) -> torch.Tensor:
        return self.t


@pytest.mark.parametrize("encoding", ["bf16", "int8"])
@pytest.mark.parametrize(("unit", "transposed"), [("cols", False), ("rows", False), ("cols", True)])
def test_encoded_patch_round_trips_with_its_fingerprint(tmp_path, encoding, unit, transposed):
    full, sft = _synthetic(tmp_path, unit, transposed)
    out = tmp_path / f"{encoding}.safetensors"
    report = convert_patch(full, out, encoding, sft=_Sft(sft))
    with safe_open(str(out), framework="pt") as h:
        meta, keys = h.metadata(), set(h.keys())
    assert meta["format_version"] == "3" and json.loads(meta["manifest"])["encoding"] == encoding
    assert "layers.0.w::delta" in keys and "layers.0.w::values" not in keys
    assert ("layers.0.w::scale" in keys) == (encoding == "int8")
    manifest, (entry,) = read_patch(out)
    assert manifest.encoding == encoding and manifest.tensors["layers.0.w"].dtype == "float32"
    patched = apply_entry(sft, entry)  # the fingerprint of the decoded result is checked here
    assert torch.equal(patched, apply_entry(sft.clone(), read_patch(out)[1][0]))  # decode is deterministic
    _, (full_entry,) = read_patch(full)
    want = apply_entry(sft, full_entry)
    assert 0 < report.max_abs_error <= (5e-4 if encoding == "int8" else 1e-3)
    assert torch.allclose(patched, want, atol=report.max_abs_error * 1.0001)
    assert entry.values.element_size() < full_entry.values.element_size()  # 2 or 1 bytes per entry, not 4


def test_full_patches_keep_version_2_and_no_encoding_key(tmp_path):
    full, sft = _synthetic(tmp_path)
    with safe_open(str(full), framework="pt") as h:
        meta = h.metadata()
    assert meta["format_version"] == "2" and "encoding" not in json.loads(meta["manifest"])
    again = tmp_path / "again.safetensors"
    convert_patch(full, again, "full", sft=_Sft(sft))
    assert again.read_bytes() == full.read_bytes()  # full -> full through the SFT gives the same bytes
    back = tmp_path / "back.safetensors"
    convert_patch(
        convert_patch(full, tmp_path / "i8.safetensors", "int8", sft=_Sft(sft)).output, back, "full", sft=_Sft(sft)
    )
    _, (e8,) = read_patch(tmp_path / "i8.safetensors")
    _, (eb,) = read_patch(back)
    assert eb.encoding == "full" and torch.equal(apply_entry(sft, eb), apply_entry(sft, e8))


def test_conversions_that_need_the_sft_model_say_so(tmp_path):
    full, _ = _synthetic(tmp_path)
    with pytest.raises(OptionError, match="--sft"):
        convert_patch(full, tmp_path / "x.safetensors", "int8")
    assert not (tmp_path / "x.safetensors").exists()


def test_reencoding_checks_the_sft_fingerprint(tmp_path):
    full, sft = _synthetic(tmp_path)
    _, (entry,) = read_patch(full)
    with pytest.raises(Exception, match="another model"):
        reencode_entry(entry, sft + 1e-3, "int8")


# ---- hostile encoded files --------------------------------------------------------------------------------


def _rewrite(src: Path, dst: Path, *, meta_change=None, manifest_change=None, tensors_change=None) -> Path:
    """``src`` with its metadata, manifest or tensors changed, the payload digest recomputed (as an attacker)."""
    with safe_open(str(src), framework="pt") as h:
        meta = dict(h.metadata())
        tensors = {k: h.get_tensor(k).clone() for k in h.keys()}
    manifest = json.loads(meta["manifest"])
    if manifest_change:
        manifest_change(manifest)
    if tensors_change:
        tensors_change(tensors)
    meta["manifest"] = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    if meta_change:
        meta_change(meta)
    meta[PAYLOAD_KEY] = payload_sha256(_tensor_bytes(tensors[n]) for n in sorted(tensors))
    dst.write_bytes(_serialize_safetensors(tensors, meta))
    return dst


def _set(d: dict, key: str, value) -> None:
    d[key] = value


W = "layers.0.w"
HOSTILE = {
    "unknown encoding": dict(manifest_change=lambda m: _set(m, "encoding", "int4")),
    "encoding not a string": dict(manifest_change=lambda m: _set(m, "encoding", 8)),
    "encoded in a version-2 file": dict(meta_change=lambda m: _set(m, "format_version", "2")),
    "version 3 without encoding": dict(manifest_change=lambda m: m.pop("encoding")),
    "delta of the wrong dtype": dict(tensors_change=lambda t: _set(t, f"{W}::delta", t[f"{W}::delta"].float())),
    "scale missing": dict(tensors_change=lambda t: t.pop(f"{W}::scale")),
    "scale of the wrong shape": dict(tensors_change=lambda t: _set(t, f"{W}::scale", t[f"{W}::scale"][:2].clone())),
    "scale of the wrong dtype": dict(tensors_change=lambda t: _set(t, f"{W}::scale", t[f"{W}::scale"].double())),
    "NaN scale": dict(tensors_change=lambda t: t[f"{W}::scale"].__setitem__(0, float("nan"))),
    "Inf scale": dict(tensors_change=lambda t: t[f"{W}::scale"].__setitem__(1, float("inf"))),
    "negative scale": dict(tensors_change=lambda t: t[f"{W}::scale"].__setitem__(2, -1.0)),
    "values beside the delta": dict(tensors_change=lambda t: _set(t, f"{W}::values", torch.zeros(12, 3))),
    "delta of the wrong shape": dict(tensors_change=lambda t: _set(t, f"{W}::delta", t[f"{W}::delta"][:, :2].clone())),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_encoded_patches_are_refused_on_read(tmp_path, case):
    full, sft = _synthetic(tmp_path)
    good = tmp_path / "int8.safetensors"
    convert_patch(full, good, "int8", sft=_Sft(sft))
    bad = _rewrite(good, tmp_path / "bad.safetensors", **HOSTILE[case])
    with pytest.raises(PatchFormatError):
        read_patch(bad)


def test_hostile_bf16_patches_are_refused_on_read(tmp_path):
    full, sft = _synthetic(tmp_path)
    good = tmp_path / "bf16.safetensors"
    convert_patch(full, good, "bf16", sft=_Sft(sft))
    nan = _rewrite(
        good, tmp_path / "nan.safetensors", tensors_change=lambda t: t[f"{W}::delta"].__setitem__((0, 0), float("nan"))
    )
    with pytest.raises(PatchFormatError, match="NaN or Inf"):
        read_patch(nan)
    scaled = _rewrite(
        good, tmp_path / "scaled.safetensors", tensors_change=lambda t: _set(t, f"{W}::scale", torch.ones(3))
    )
    with pytest.raises(PatchFormatError):
        read_patch(scaled)


def test_a_scale_that_overflows_on_decode_is_refused_on_apply(tmp_path):
    full, sft = _synthetic(tmp_path)
    good = tmp_path / "int8.safetensors"
    convert_patch(full, good, "int8", sft=_Sft(sft))
    huge = _rewrite(good, tmp_path / "huge.safetensors", tensors_change=lambda t: t[f"{W}::scale"].fill_(3e38))
    _, (entry,) = read_patch(huge)  # finite, non-negative: readable
    with pytest.raises(PatchFormatError, match="decodes to NaN or Inf"):
        apply_entry(sft, entry)


def test_a_changed_delta_fails_the_patched_fingerprint(tmp_path):
    full, sft = _synthetic(tmp_path)
    good = tmp_path / "int8.safetensors"
    convert_patch(full, good, "int8", sft=_Sft(sft))
    bad = _rewrite(good, tmp_path / "bad.safetensors", tensors_change=lambda t: t[f"{W}::delta"].__setitem__((0, 0), 3))
    _, (entry,) = read_patch(bad)
    with pytest.raises(PatchFormatError, match="fingerprint"):
        apply_entry(sft, entry)


# ---- tiny models: patch --encoding, convert, apply -----------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3"])
def test_every_encoding_round_trips_through_apply(tiny_models, calib, tmp_path, family):
    from tests.support.tiny import perturb_columns

    base = tiny_models(family)
    sft = tmp_path / "sft"
    perturb_columns(base, sft)
    hon, task = calib
    full = tmp_path / "full.safetensors"
    make_patch(str(sft), str(base), hon, task, full, PatchOptions(max_samples=8))
    want = load_file(str(sft / "model.safetensors"))
    outs = {}
    for encoding in ("full", "bf16", "int8"):
        patch = tmp_path / f"{encoding}.safetensors"
        if encoding != "full":
            res = cli("convert", str(full), "--to", encoding, "--sft", str(sft), "-o", str(patch))
            assert res.exit_code == 0, res.output
            assert read_manifest(patch).encoding == encoding
            assert patch.stat().st_size < full.stat().st_size
        for run in ("a", "b"):
            out = tmp_path / f"{encoding}-{run}"
            apply_patch(str(sft), patch if encoding != "full" else full, out)
            outs[encoding, run] = (out / "model.safetensors").read_bytes()
        assert outs[encoding, "a"] == outs[encoding, "b"]  # bit-reproducible per encoding
    got = {e: load_file(str(tmp_path / f"{e}-a" / "model.safetensors")) for e in ("full", "bf16", "int8")}
    _, entries = read_patch(full)
    touched = {e.weight for e in entries}
    for name, t in want.items():
        if name not in touched:
            assert torch.equal(got["int8"][name], t) and torch.equal(got["bf16"][name], t)
            continue
        change = (got["full"][name] - t).abs().max()
        for encoding, tol in (("bf16", 2**-8), ("int8", 1 / 254)):
            assert (got[encoding][name] - got["full"][name]).abs().max() <= tol * change + 1e-7, (encoding, name)


def test_patch_encoding_option_writes_what_convert_writes(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    common = ["patch", str(sft), "--base", str(base), "--honesty-data", str(hon), "--task-data", str(task)]
    full, direct = tmp_path / "full.safetensors", tmp_path / "direct.safetensors"
    assert cli(*common, "-o", str(full), "--max-samples", "8").exit_code == 0
    res = cli(*common, "-o", str(direct), "--max-samples", "8", "--encoding", "int8")
    assert res.exit_code == 0, res.output
    assert "int8" in res.output
    converted = tmp_path / "converted.safetensors"
    assert cli("convert", str(full), "--to", "int8", "--sft", str(sft), "-o", str(converted)).exit_code == 0
    assert direct.read_bytes() == converted.read_bytes()
    report = json.loads((tmp_path / "direct.safetensors.report.json").read_text())
    assert report["encoding"] == "int8" and report["encoding_error"]["max_abs_error"] > 0
    assert "--encoding int8" in (tmp_path / "direct.safetensors.command.txt").read_text()
    assert not (tmp_path / "direct.safetensors.work").exists()
    inspect = cli("inspect", str(direct))
    assert "encoding            int8" in inspect.output


def test_convert_without_sft_is_one_error_and_writes_nothing(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    full = tmp_path / "full.safetensors"
    make_patch(str(sft), str(base), hon, task, full, PatchOptions(max_samples=8))
    out = tmp_path / "int8.safetensors"
    res = cli("convert", str(full), "--to", "int8", "-o", str(out))
    assert res.exit_code == 2 and "--sft" in assert_one_error_line(res)
    assert not out.exists()
    res = cli("convert", str(full), "--to", "int8", "--sft", str(base), "-o", str(out))  # the wrong model
    assert res.exit_code == 2 and "another model" in assert_one_error_line(res)
    assert not out.exists()


def test_the_benchmark_table_has_a_row_per_encoding():
    from benchmarks.patch_encodings import table

    metrics = {"honesty_f1": 0.5, "refusal_unanswerable": 0.4, "refusal_answerable": 0.1, "task_accuracy": 0.5}
    rows = {"m1": dict(metrics, honesty_f1=0.3)}
    for encoding, size in (("full", 40e6), ("bf16", 20e6), ("int8", 10e6)):
        rows[encoding] = dict(
            metrics,
            bytes=size,
            share_of_model_bytes=size / 540e6,
            max_abs_error=1e-4,
            mean_abs_error=1e-5,
            f1_gain_kept=1.0,
            answers_identical_to_full=9,
        )
    text = table({"n_items": 10, "rows": rows})
    assert text.count("\n") == 5 and "| M1 + int8 patch | 10.0 MB | 1.85% |" in text and "9/10" in text
