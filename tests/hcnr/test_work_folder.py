"""``<patch>.work/``: a run that dies after any part resumes from the parts and writes the same bytes;
a folder left by other inputs or options is cleared, never reused; a folder that is not ours is refused."""

from __future__ import annotations

import hashlib

import pytest

from surgery.errors import SurgeryError
from surgery.hcnr.options import ComputeOptions, PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.hcnr.workdir import WorkFolder, work_folder_of

PROTECT = PatchOptions(compensation="protect", r_iw=0.25, r_cw=0.8, max_samples=8)


class _Crash(Exception):
    pass


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(pair, calib, out, options=PROTECT, **compute):
    base, sft, _ = pair
    return make_patch(str(sft), str(base), *calib, out, options, compute=ComputeOptions(**compute))


@pytest.fixture()
def reference(tiny_pair, calib, tmp_path):
    out = tmp_path / "ref.safetensors"
    _run(tiny_pair, calib, out)
    return _sha(out)


@pytest.mark.parametrize("parts_before_crash", [1, 4, 9, 12])
def test_a_run_killed_after_some_parts_resumes_with_the_same_bytes(
    parts_before_crash, reference, tiny_pair, calib, tmp_path, monkeypatch, caplog
):
    out = tmp_path / "p.safetensors"
    real_save, saved = WorkFolder.save, []

    def crashing_save(self, name, tensors, meta=None):
        if len(saved) == parts_before_crash:
            raise _Crash(name)
        real_save(self, name, tensors, meta)
        saved.append(name)

    monkeypatch.setattr(WorkFolder, "save", crashing_save)
    with pytest.raises(_Crash):
        _run(tiny_pair, calib, out)
    assert not out.exists() and work_folder_of(out).is_dir()
    monkeypatch.setattr(WorkFolder, "save", real_save)
    caplog.set_level("INFO")
    report = _run(tiny_pair, calib, out)
    assert _sha(out) == reference
    assert report.reused, "the rerun should have reused the parts written before the crash"
    assert any("reusing" in r.getMessage() for r in caplog.records)
    assert not work_folder_of(out).exists()  # removed on success


def test_work_from_other_options_is_not_reused(reference, tiny_pair, calib, tmp_path):
    out = tmp_path / "p.safetensors"
    _run(tiny_pair, calib, out, PROTECT.replace(r_iw=0.5), keep_work=True)
    assert work_folder_of(out).is_dir()
    report = _run(tiny_pair, calib, out)
    assert report.reused == []
    assert _sha(out) == reference


def test_keep_work_keeps_a_folder_a_rerun_reuses_whole(reference, tiny_pair, calib, tmp_path):
    out = tmp_path / "p.safetensors"
    _run(tiny_pair, calib, out, keep_work=True)
    assert (work_folder_of(out) / "manifest.json").is_file()
    out.unlink()
    report = _run(tiny_pair, calib, out)
    assert report.reused and _sha(out) == reference
    assert report.seconds.get("fisher", 0.0) < 5.0


def test_a_folder_that_is_not_a_work_folder_is_refused_and_kept(tiny_pair, calib, tmp_path):
    out = tmp_path / "p.safetensors"
    mine = work_folder_of(out)
    mine.mkdir()
    (mine / "notes.txt").write_text("my own files")
    with pytest.raises(SurgeryError, match="not a work folder"):
        _run(tiny_pair, calib, out)
    assert (mine / "notes.txt").read_text() == "my own files"
