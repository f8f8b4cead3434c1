"""The Hugging Face hub, the way its own tools use it: ids resolve from the cache, else download; outputs push.

A model argument that is not a local folder but has the shape of a hub id, ``org/name`` or
``org/name@revision`` (a branch, tag or commit), is looked up in the Hugging Face cache first
(``$HF_HUB_CACHE``, ``$HF_HOME``); when it is not there it is downloaded with
``huggingface_hub.snapshot_download``, unless ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) says
the machine is offline, in which case the user gets one sentence saying so. Only the files a model
folder is made of are fetched (:data:`MODEL_FILES`), never pickle weights or other formats' copies.

:func:`push` uploads a written folder or a patch's files to a hub repository (created if missing), through
``huggingface_hub.HfApi``; the tests replace ``HfApi`` by a local stand-in, nothing here talks to a real hub
unless a user asks for it.

``huggingface_hub`` is imported inside the functions: it is heavy, and every other command works without it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import HubError, ModelFolderError, OptionError
from .options import opt

log = logging.getLogger(__name__)

#: the files of a model (or PEFT adapter) folder that a download fetches: weights in safetensors, configs,
#: tokenizer files; not pickle weights, GGUF or ONNX copies that many repositories also hold
MODEL_FILES = (
    "*.safetensors",
    "*.json",
    "tokenizer.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
    "*.jinja",
)

#: an id as the hub spells it: owner and name of letters, digits, '-', '_' and '.', at most 96 characters each
_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO = re.compile(rf"{_NAME}/{_NAME}")
#: a branch, tag or commit: what git allows in a ref name, minus what could walk out of the cache
_REVISION = re.compile(r"[\w][\w./-]{0,254}")
#: the values that mean "on", as huggingface_hub reads its environment
_TRUE = ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class CardOptions:
    """What ``apply`` and ``deploy`` put into the model card (``README.md``) beyond what they know themselves.

    (Here rather than in :mod:`surgery.modelcard` so that the command modules can declare it without importing
    torch.)"""

    eval_results: str | None = opt(
        None, "A 'surgery eval --json' result of the repaired model, quoted in its model card.", metavar="FILE"
    )


@dataclass(frozen=True)
class PushOptions:
    """``--push-to-hub``: where ``apply``, ``deploy`` and ``patch`` upload what they wrote."""

    push_to_hub: str | None = opt(
        None, "Upload the output to this Hugging Face hub repository (created if missing).", metavar="REPO"
    )
    private: bool = opt(False, "Make the repository private when --push-to-hub creates it.")


@dataclass(frozen=True)
class HubRef:
    """A model on the hub: its repository id and the revision asked for (None: the default branch)."""

    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"


def parse_hub_id(text: str) -> HubRef | None:
    """``org/name`` or ``org/name@revision`` as a :class:`HubRef`; None when ``text`` does not look like one."""
    repo, _, revision = text.partition("@")
    if not _REPO.fullmatch(repo) or ".." in repo or "--" in repo:
        return None
    if revision and (not _REVISION.fullmatch(revision) or ".." in revision or revision.endswith("/")):
        return None
    if text.endswith("@"):
        return None
    return HubRef(repo, revision or None)


def require_repo_id(text: str, flag: str) -> str:
    """``text`` when it is a repository id to push to (``org/name``, no revision), else one sentence."""
    ref = parse_hub_id(text)
    if ref is None or ref.revision is not None:
        raise OptionError(f"{flag} takes a hub repository id such as 'my-org/my-model', not {text!r}.")
    return ref.repo


def offline() -> bool:
    """Whether the environment forbids the hub (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``), read now.

    ``huggingface_hub`` reads these once, when it is imported; reading them per call lets a process (or a
    test) change its mind.
    """
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def _cache_dir() -> str | None:
    """``$HF_HUB_CACHE`` when set (passed explicitly: huggingface_hub read it when it was first imported)."""
    return os.environ.get("HF_HUB_CACHE") or None


def resolve_model_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """A local folder as given; else a hub id from the cache, downloaded first unless offline."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ModelFolderError(f"{p} is a file, but a model folder (config.json + weights) was expected.")
    text = str(name_or_path)
    ref = parse_hub_id(text) if not text.startswith((".", "/", "~")) else None
    if ref is None:
        raise ModelFolderError(
            f"Model '{text}' is neither a local folder nor a hub id (org/name or org/name@revision)."
        )
    return fetch(ref)


def fetch(ref: HubRef) -> Path:
    """The snapshot folder of ``ref``: from the local cache, else downloaded (unless offline)."""
    import huggingface_hub

    cached = _from_cache(ref)
    if cached is not None:
        return cached
    if offline():
        raise HubError(
            f"Model '{ref}' is not a local folder and not in the local cache, and HF_HUB_OFFLINE=1 forbids "
            "downloading it: download it on a connected machine (huggingface-cli download), or unset HF_HUB_OFFLINE."
        )
    log.info("downloading %s from the Hugging Face hub (model files only)", ref)
    try:
        path = huggingface_hub.snapshot_download(
            ref.repo, revision=ref.revision, cache_dir=_cache_dir(), allow_patterns=list(MODEL_FILES)
        )
    except Exception as exc:  # noqa: BLE001 - network and hub libraries raise many types; each becomes a sentence
        raise HubError(
            f"Model '{ref}' is not a local folder, and downloading it from the Hugging Face hub failed: {_reason(exc)}."
        ) from None
    return Path(path)


def _from_cache(ref: HubRef) -> Path | None:
    import huggingface_hub

    try:
        path = huggingface_hub.snapshot_download(
            ref.repo, revision=ref.revision, local_files_only=True, cache_dir=_cache_dir()
        )
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        return None
    return Path(path)


def _reason(exc: BaseException) -> str:
    """What went wrong, in words a user can act on (the hub's own message is long and multi-line)."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return "the repository is gated: accept its licence on the hub and log in (huggingface-cli login)"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return "no such repository, or it is private and you are not logged in (huggingface-cli login)"
    if isinstance(exc, errors.RevisionNotFoundError):
        return "no such revision (branch, tag or commit) in the repository"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first.rstrip(".")


def check_can_push(repo: str | None, flag: str = "--push-to-hub") -> str | None:
    """Before any work: the repository id is valid and the environment is not offline (None: no push asked)."""
    if repo is None:
        return None
    repo = require_repo_id(repo, flag)
    if offline():
        raise OptionError(f"{flag} needs the network, but HF_HUB_OFFLINE=1 is set; unset it to push.")
    return repo


def push(repo: str, path: Path, *, files: Sequence[Path] = (), commit_message: str, private: bool = False) -> str:
    """Upload the folder ``path`` (or, with ``files``, those files by name) to ``repo``; returns its URL.

    The repository is created when missing (``private`` then applies); what is uploaded replaces the files of
    the same names in it, in one commit.
    """
    import huggingface_hub

    repo = require_repo_id(repo, "--push-to-hub")
    api = huggingface_hub.HfApi()
    try:
        url = api.create_repo(repo, repo_type="model", exist_ok=True, private=private)
        if files:
            ops = [huggingface_hub.CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(f)) for f in files]
            api.create_commit(repo, operations=ops, commit_message=commit_message, repo_type="model")
        else:
            api.upload_folder(repo_id=repo, folder_path=str(path), commit_message=commit_message, repo_type="model")
    except Exception as exc:  # noqa: BLE001 - network and hub libraries raise many types; each becomes a sentence
        raise HubError(f"Could not push to the hub repository '{repo}': {_reason(exc)}.") from None
    log.info("pushed %s to %s", path, url)
    return str(url)
