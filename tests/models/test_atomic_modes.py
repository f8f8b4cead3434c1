"""Outputs get the modes a plain ``open``/``mkdir`` would give them, so others on a shared machine can read them.

:mod:`tempfile` makes files 0600 and folders 0700; every output goes through one (surgery/atomic.py), so
without the final chmod every patch, report and model folder would be private to its writer.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from surgery.atomic import atomic_file, atomic_folder, normal_modes, write_json_atomic, write_text_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_files_written_atomically_honour_the_umask(tmp_path, umask):
    text, data = write_text_atomic(tmp_path / "a.txt", "hi"), write_json_atomic(tmp_path / "b.json", {"x": 1})
    with atomic_file(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"\0")
    for path in (text, data, tmp_path / "c.bin"):
        assert _mode(path) == 0o666 & ~umask, f"{path.name}: {oct(_mode(path))}"


def test_folders_written_atomically_honour_the_umask_all_the_way_down(tmp_path, umask):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "sub" / "deeper").mkdir(parents=True)
        (tmp / "config.json").write_text("{}")
        (tmp / "sub" / "deeper" / "weights.bin").write_bytes(b"\0")
        os.chmod(tmp / "sub", 0o700)  # a writer that made a private folder (as tempfile does) still gets the norm
    assert _mode(out) == 0o777 & ~umask
    assert _mode(out / "sub") == _mode(out / "sub" / "deeper") == 0o777 & ~umask
    assert _mode(out / "config.json") == _mode(out / "sub" / "deeper" / "weights.bin") == 0o666 & ~umask


def test_under_umask_022_outputs_are_0644_and_0755(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.md", "# r\n")
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "model.safetensors").write_bytes(b"\0")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "report.md") == 0o644
    assert _mode(tmp_path / "out") == 0o755 and _mode(tmp_path / "out" / "model.safetensors") == 0o644


def test_normal_modes_leaves_symlinks_alone(tmp_path, umask):
    target = tmp_path / "target.txt"
    target.write_text("x")
    os.chmod(target, 0o600)
    folder = tmp_path / "f"
    folder.mkdir(mode=0o700)
    (folder / "link").symlink_to(target)
    normal_modes(folder)
    assert _mode(folder) == 0o777 & ~umask
    assert _mode(target) == 0o600  # not followed
