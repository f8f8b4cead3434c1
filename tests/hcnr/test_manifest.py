"""The typed patch manifest: read and written in one place, the stored JSON round-trips exactly, and a
field of the wrong type is one PatchFormatError."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from surgery.errors import PatchFormatError
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.patchfile import PatchManifest, PatchStats, read_manifest, read_patch


@pytest.fixture()
def patch(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    out = tmp_path / "p.safetensors"
    report = make_patch(str(sft), str(base), hon, task, out, PatchOptions(r_iw=0.25))
    return out, report


def _stored(path):
    with safe_open(str(path), "pt") as f:
        meta, names = f.metadata(), f.keys()
        return meta, {k: f.get_tensor(k) for k in names}


def test_manifest_attributes_and_exact_round_trip(patch):
    path, report = patch
    m = read_manifest(path)
    assert isinstance(m, PatchManifest) and isinstance(m.stats, PatchStats)
    assert (m.tool, m.method) == ("surgery", "HCNR")
    assert m.options["r_iw"] == 0.25 and m.calibration["honesty"]["sha256"]
    assert m.stats.parameters_changed == report.parameters_changed > 0
    assert set(m.tensors) == set(m.stats.per_matrix) and all(t.count > 0 for t in m.tensors.values())
    meta, _ = _stored(path)
    assert m.to_dict() == json.loads(meta["manifest"])
    assert json.dumps(m.to_dict(), sort_keys=True, separators=(",", ":")) == meta["manifest"]


def test_report_to_dict_is_the_report_file(patch):
    path, report = patch
    stored = json.loads(path.with_name(path.name + ".report.json").read_text())
    assert report.to_dict() == stored
    assert list(stored) == sorted(
        [
            "patch",
            "patch_bytes",
            "seconds",
            "seconds_total",
            "peak_rss_mb",
            "device",
            "dtype",
            "threads",
            "calibration_examples",
            "parameters_changed",
            "share_of_linear",
            "share_of_model",
            "linear_parameters",
            "model_parameters",
            "matrices_total",
            "matrices_touched",
            "fallbacks",
            "hessian_tokens",
            "hessian_groups",
            "residual_ratio",
            "options",
            "reused",
            "encoding",
            "encoding_error",
        ]
    )
    assert report.patch_bytes == path.stat().st_size


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m.update(tool=3),
        lambda m: m.pop("options"),
        lambda m: m["stats"].update(parameters_changed="many"),
        lambda m: m["stats"].update(fallbacks=[1]),
        lambda m: next(iter(m["tensors"].values())).update(count=True),
        lambda m: next(iter(m["tensors"].values())).update(unit="diagonal"),
        lambda m: next(iter(m["stats"]["per_matrix"].values())).update(drift_sft="x"),
    ],
)
def test_fields_of_the_wrong_type_are_refused(patch, tmp_path, damage):
    path, _ = patch
    meta, tensors = _stored(path)
    manifest = json.loads(meta["manifest"])
    damage(manifest)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "manifest": json.dumps(manifest)})
    with pytest.raises(PatchFormatError, match="manifest"):
        read_patch(bad)
