"""``<patch>.work/``: the streamed pipeline's parts on disk, so a killed run resumes where it stopped.

Every part (a block's cached activations, a block's Fisher sums, a block's patch entries) is one
safetensors file written atomically: it either exists whole or not at all, so "the first missing part"
is where a rerun starts. The folder's ``manifest.json`` records everything the parts depend on (options,
tool version, calibration and model fingerprints, dtype, world size); a folder left by a run with other
inputs is stale and is cleared rather than reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_file, write_json_atomic
from ..errors import SurgeryError
from ..modelio import ModelSource

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def work_folder_of(patch: Path) -> Path:
    """Where the parts of ``patch`` are kept while it is being made."""
    return patch.with_name(patch.name + ".work")


class WorkFolder:
    """Atomic part files under one folder, valid only for the inputs recorded in its manifest."""

    def __init__(self, root: Path, identity: dict[str, Any]) -> None:
        self.root = root
        self.identity = json.loads(json.dumps(identity, sort_keys=True))  # plain JSON, comparable
        self.reused: list[str] = []
        self.fresh: set[str] = set()  # parts written by this run
        self._open()

    def _open(self) -> None:
        manifest = self.root / MANIFEST
        if self.root.exists():
            recorded = _read_manifest(manifest)
            if recorded == self.identity:
                log.info("resuming from %s", self.root)
                return
            ours = isinstance(recorded, dict) and recorded.get("tool") == "surgery"
            if not self.root.is_dir() or not (ours or not any(self.root.iterdir())):
                raise SurgeryError(f"{self.root} exists and is not a work folder of this tool; move it away.")
            log.info("%s was left by a run with other inputs or options: starting afresh", self.root)
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        write_json_atomic(manifest, self.identity, sort_keys=True)

    def path(self, name: str) -> Path:
        return self.root / f"{name}.safetensors"

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def from_earlier_run(self, name: str) -> bool:
        """The part exists and this run did not write it (it is being reused)."""
        return self.has(name) and name not in self.fresh

    def save(self, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
        """Write one part atomically (contiguous CPU copies)."""
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        with atomic_file(path) as tmp:
            save_file(data, str(tmp), metadata=meta)
        self.fresh.add(name)

    def load(self, name: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Every tensor of one part."""
        with safe_open(str(self.path(name)), framework="pt", device=str(device)) as h:
            return {k: h.get_tensor(k) for k in h.keys()}

    def load_one(self, name: str, key: str) -> torch.Tensor:
        """One tensor of one part."""
        with safe_open(str(self.path(name)), framework="pt") as h:
            return h.get_tensor(key)

    def meta(self, name: str) -> dict[str, str]:
        with safe_open(str(self.path(name)), framework="pt") as h:
            return dict(h.metadata() or {})

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def note_reused(self, what: str) -> None:
        """Log (once per stage) that a part from an earlier run is used as it is."""
        if what not in self.reused:
            self.reused.append(what)
            log.info("reusing %s from %s", what, self.root)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _read_manifest(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def model_fingerprint(source: ModelSource) -> dict[str, Any]:
    """What identifies a model folder cheaply: its config's sha256 and each weight file's name, size and mtime.

    (Hashing the weights themselves would read an 8B model twice just to decide whether to resume.)
    """
    folders = [source.path] + ([source.config_dir] if source.adapter_base is not None else [])
    files = []
    for folder in folders:
        for f in sorted(folder.iterdir()):
            if f.is_file() and (f.suffix in (".safetensors", ".bin", ".json", ".pt", ".pth")):
                st = f.stat()
                files.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    config = source.config_dir / "config.json"
    return {"config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(), "files": files}
