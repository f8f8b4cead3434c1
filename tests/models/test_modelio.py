"""Model folder I/O: written folders get normal modes, folder problems are ModelFolderError."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from surgery.errors import ModelFolderError
from surgery.modelio import LazyCheckpoint, locate, write_safetensors_folder


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_folder_has_normal_modes_and_same_tensors(tiny_models, tmp_path, umask_022):
    src = tiny_models("llama")
    ckpt = LazyCheckpoint.from_dir(src)
    out = tmp_path / "copy"
    write_safetensors_folder(
        ((k, ckpt.get(k)) for k in ckpt.keys()), out, [src], max_shard_bytes=10_000, extra_files={"note.txt": "hi"}
    )
    assert _mode(out) == 0o755
    files = sorted(p for p in out.iterdir())
    assert files and all(_mode(p) == 0o644 for p in files)
    assert (out / "model.safetensors.index.json").is_file()  # sharded at this size
    copy = LazyCheckpoint.from_dir(out)
    assert sorted(copy.keys()) == sorted(ckpt.keys())
    assert all(torch.equal(copy.get(k), ckpt.get(k)) for k in ckpt.keys())
    assert not list(tmp_path.glob(".copy.tmp-*"))


def test_non_empty_output_is_refused(tiny_models, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ModelFolderError, match="not empty"):
        write_safetensors_folder(iter([]), tmp_path / "out", [])
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_folder_problems_are_model_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="no config.json"):
        locate(str(tmp_path / "empty"))
    with pytest.raises(ModelFolderError, match="neither a local folder"):
        locate(str(tmp_path / "missing"))
