"""Which exact version of a model a patch was made from: a hub commit, or a fingerprint of a local folder.

A patch's manifest records the sha256 of every SFT tensor it touches, which is what ``apply`` checks; the
revision says, for people, where to get the same base and SFT again: ``{"kind": "hub", "repo", "commit"}``
for a folder in the Hugging Face cache (its snapshot folder is named by the commit), else
``{"kind": "folder", "sha256", "files"}``: the sha256 of the sorted ``"<file sha256>  <name>"`` lines of the
folder's model files (what ``sha256sum`` prints, so anyone holding the same files computes the same value,
whatever the path or the modification times).

A manifest may come from a stranger: :func:`check_revisions` validates the field's shape and sizes before
anything else reads it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from .errors import PatchFormatError
from .hub import parse_hub_id
from .modelio import ModelSource, file_sha256

#: the files that make a model folder (weights, configs, tokenizer); READMEs and notes do not change the model
MODEL_SUFFIXES = (".safetensors", ".json", ".bin", ".pt", ".pth", ".model", ".txt", ".jinja", ".tiktoken")
#: roles a manifest may record a revision for: the two models, and the base of either when it is an adapter
ROLES = ("base", "sft", "base_adapter_base", "sft_adapter_base")
KINDS = ("hub", "folder")

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_FILES = 1_000_000


def hub_snapshot(folder: Path) -> tuple[str, str] | None:
    """``(repo, commit)`` when ``folder`` is a Hugging Face cache snapshot (``models--org--name/snapshots/<sha>``)."""
    folder = folder.absolute()
    repo_dir = folder.parent.parent
    if folder.parent.name != "snapshots" or not repo_dir.name.startswith("models--"):
        return None
    repo = repo_dir.name[len("models--") :].replace("--", "/", 1)
    if not _COMMIT.fullmatch(folder.name) or parse_hub_id(repo) is None:
        return None
    return repo, folder.name


def folder_fingerprint(folder: Path) -> dict[str, Any]:
    """The sha256 of the folder's model files, by content and name (reads every file once)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES)
    lines = "".join(f"{file_sha256(p)}  {p.name}\n" for p in files)
    return {"kind": "folder", "sha256": hashlib.sha256(lines.encode("utf-8")).hexdigest(), "files": len(files)}


def model_revision(folder: Path) -> dict[str, Any]:
    """The revision of one model folder: its hub commit when it is a cache snapshot, else its fingerprint."""
    snapshot = hub_snapshot(folder)
    if snapshot is not None:
        return {"kind": "hub", "repo": snapshot[0], "commit": snapshot[1]}
    return folder_fingerprint(folder)


def source_revisions(sources: dict[str, ModelSource]) -> dict[str, dict[str, Any]]:
    """``role -> revision`` for each source, plus ``<role>_adapter_base`` for a PEFT adapter's base."""
    out: dict[str, dict[str, Any]] = {}
    for role, src in sources.items():
        out[role] = model_revision(src.path)
        if src.adapter_base is not None:
            out[f"{role}_adapter_base"] = model_revision(src.adapter_base)
    return out


def describe(revision: dict[str, Any] | None) -> str:
    """One line for people: ``hub org/name@<commit>`` or ``folder sha256 <hex> (n files)``."""
    if not revision:
        return "not recorded"
    if revision["kind"] == "hub":
        return f"hub {revision['repo']}@{revision['commit']}"
    return f"folder sha256 {revision['sha256']} ({revision['files']} files)"


def check_revisions(data: Any, where: str) -> dict[str, dict[str, Any]]:
    """The manifest's ``revisions`` field, every key and value checked (a stranger may have written it)."""
    if not isinstance(data, dict) or len(data) > len(ROLES):
        raise PatchFormatError(f"{where} must be an object with at most {len(ROLES)} entries (damaged manifest).")
    out: dict[str, dict[str, Any]] = {}
    for role, rev in data.items():
        if role not in ROLES:
            known = ", ".join(ROLES)
            raise PatchFormatError(f"{where}: unknown role {str(role)[:40]!r}, not one of {known} (damaged patch).")
        out[role] = _check_revision(rev, f"{where}.{role}")
    return out


def _check_revision(rev: Any, where: str) -> dict[str, Any]:
    if not isinstance(rev, dict) or rev.get("kind") not in KINDS:
        raise PatchFormatError(f"{where} must be an object whose 'kind' is 'hub' or 'folder' (damaged manifest).")
    if rev["kind"] == "hub":
        repo, commit = rev.get("repo"), rev.get("commit")
        hub_ok = set(rev) == {"kind", "repo", "commit"} and isinstance(commit, str) and bool(_COMMIT.fullmatch(commit))
        if not hub_ok or not isinstance(repo, str) or "@" in repo or parse_hub_id(repo) is None:
            raise PatchFormatError(f"{where}: a hub revision is a repository id and a 40-digit commit (damaged patch).")
        return {"kind": "hub", "repo": repo, "commit": commit}
    digest, files = rev.get("sha256"), rev.get("files")
    ok = set(rev) == {"kind", "sha256", "files"} and isinstance(digest, str) and _SHA256.fullmatch(digest) is not None
    if not ok or not isinstance(files, int) or isinstance(files, bool) or not 0 <= files <= _MAX_FILES:
        raise PatchFormatError(f"{where}: a folder revision is a sha256 and a file count (damaged manifest).")
    return {"kind": "folder", "sha256": digest, "files": files}
