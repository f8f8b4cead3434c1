"""Finding, opening and writing checkpoints: local folders, hub ids (:mod:`surgery.hub`), PEFT adapters.

Weights are read tensor by tensor from safetensors (never a second full model in memory where it can
be avoided), pickle checkpoints are refused unless the user opts in, and ``trust_remote_code`` stays
off unless asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import hub
from .adapter_merge import ADAPTER_CONFIG, LoraAdapter
from .atomic import atomic_folder
from .errors import ModelFolderError
from .model_folder import (
    PICKLE_SUFFIXES,
    check_shapes_against_config,
    confined,
    index_shards,
    read_json_object,
    safetensors_header,
)

log = logging.getLogger(__name__)

#: files copied from a source model folder into a written one (weights are written separately)
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local folder as given, else a hub id (``org/name[@revision]``) from the cache or downloaded
    (:mod:`surgery.hub`: nothing is downloaded when ``HF_HUB_OFFLINE=1``)."""
    return hub.resolve_model_dir(name_or_path)


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def adapter_base_name(path: Path) -> str | None:
    name = read_json_object(path / ADAPTER_CONFIG).get("base_model_name_or_path")
    if name is not None and not isinstance(name, str):
        raise ModelFolderError(f"{path / ADAPTER_CONFIG}: base_model_name_or_path is not a string.")
    return name


def safetensors_files(path: Path, allow_pickle: bool = False) -> list[Path]:
    """The weight files of a model folder, validated (:func:`_weight_files`): every reader passes here."""
    files = _weight_files(path, allow_pickle)
    config = path / "config.json"
    for f in files:
        if f.suffix == ".safetensors":
            shapes = safetensors_header(f)  # complete file, sane header, before safetensors or torch see it
            if config.is_file():
                check_shapes_against_config(config, shapes)
    return files


def _weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    """The safetensors weight files of a model folder; refuses pickle-only folders unless allowed."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = index_shards(index, allow_pickle)
        missing = [n for n in names if not confined(path, n).is_file()]
        if missing:
            raise ModelFolderError(f"{path} is missing shard {missing[0]} named in its safetensors index.")
        return [path / n for n in names]
    files = sorted(p for p in path.glob("*.safetensors") if not p.name.startswith("adapter_"))
    if files:
        return [confined(path, f.name) for f in files]
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        if not allow_pickle:
            raise ModelFolderError(
                f"{path} only has pickle weights ({pickles[0].name}); pickle can run arbitrary code, so it is "
                "refused. Convert it to safetensors, or pass --allow-pickle if you trust the file."
            )
        return pickles
    raise ModelFolderError(f"{path} has no weight files (*.safetensors).")


class LazyCheckpoint:
    """Name -> tensor access over one or more weight files, opening one tensor at a time."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self.files = files
        self._where: dict[str, Path] = {}
        self._pickled: dict[str, torch.Tensor] = {}
        for f in files:
            if f.suffix == ".safetensors":
                try:
                    with safe_open(str(f), framework="pt") as h:
                        keys = list(h.keys())
                except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
                    raise ModelFolderError(f"{f} is not a readable safetensors file: {str(exc)[:200]}") from None
                for k in keys:
                    self._where[k] = f
            else:  # only reached with --allow-pickle
                sd = torch.load(str(f), map_location="cpu", weights_only=True)
                for k, v in sd.items():
                    self._pickled[k] = v
                    self._where[k] = f

    @classmethod
    def from_dir(cls, path: Path, allow_pickle: bool = False) -> LazyCheckpoint:
        return cls(safetensors_files(path, allow_pickle))

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        if name in self._pickled:
            return self._pickled[name]
        from safetensors import safe_open

        try:
            f = self._where[name]
        except KeyError:
            raise ModelFolderError(f"Tensor '{name}' is not in the checkpoint ({self.files[0].parent}).") from None
        with safe_open(str(f), framework="pt") as h:
            return h.get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._pickled:
            return tuple(self._pickled[name].shape)
        from safetensors import safe_open

        with safe_open(str(self._where[name]), framework="pt") as h:
            return tuple(h.get_slice(name).get_shape())


class AdapterCheckpoint(LazyCheckpoint):
    """A LazyCheckpoint of an adapter's base whose tensors come out with the LoRA adapter merged in.

    The names and shapes are the base's (a tied weight stays stored once); ``get`` reads one base tensor
    and only the adapter tensors that change it (:class:`surgery.adapter_merge.LoraAdapter`), so the
    whole model is never in memory.
    """

    def __init__(
        self,
        base_files: list[Path],
        adapter_dir: Path,
        base_dir: Path,
        allow_pickle: bool = False,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(base_files)
        self.adapter = LoraAdapter(self, adapter_dir, base_dir, allow_pickle=allow_pickle, dtype=dtype)

    def get(self, name: str) -> torch.Tensor:
        t = super().get(name)
        # the merge adds in place: a fresh safetensors read is ours, a pickle checkpoint's cached tensor is not
        return self.adapter.merge(name, t.clone() if name in self._pickled else t)


class StateDictCheckpoint:
    """The LazyCheckpoint interface over an in-memory state dict (tests, small in-memory models)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self._state = state

    def keys(self) -> list[str]:
        return list(self._state)

    def __contains__(self, name: str) -> bool:
        return name in self._state

    def get(self, name: str) -> torch.Tensor:
        try:
            return self._state[name]
        except KeyError:
            raise ModelFolderError(f"Tensor '{name}' is not in the merged model.") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)


def tensor_sha256(t: torch.Tensor) -> str:
    """Fingerprint of a tensor's dtype, shape and exact bytes."""
    t = t.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelSource:
    """Where a model comes from: a full folder, or a PEFT adapter on top of a base."""

    spec: str
    path: Path
    adapter_base: Path | None = None  # set when `path` is a PEFT adapter

    @property
    def config_dir(self) -> Path:
        return self.adapter_base if self.adapter_base is not None else self.path

    @property
    def identifier(self) -> str:
        if self.adapter_base is not None:
            return f"{self.spec} (adapter on {self.adapter_base})"
        return self.spec


def locate(spec: str | os.PathLike, base_hint: str | os.PathLike | None = None) -> ModelSource:
    """Resolve a model argument; a PEFT adapter folder is paired with its base (hint first)."""
    path = resolve_model_dir(spec)
    if not is_adapter_dir(path):
        if not (path / "config.json").is_file():
            raise ModelFolderError(f"{path} has no config.json: it is not a Hugging Face model folder.")
        read_json_object(path / "config.json")
        return ModelSource(str(spec), path)
    named = adapter_base_name(path)  # read even when --base wins: a malformed adapter config is refused here
    base_spec = base_hint or named
    if not base_spec:
        raise ModelFolderError(f"{path} is a PEFT adapter without base_model_name_or_path; pass --base.")
    base = resolve_model_dir(base_spec)
    if is_adapter_dir(base):
        raise ModelFolderError(f"The base of adapter {path} ({base}) is itself an adapter; merge it first.")
    if not (base / "config.json").is_file():
        raise ModelFolderError(f"{base} has no config.json: it is not a Hugging Face model folder.")
    read_json_object(base / "config.json")
    return ModelSource(str(spec), path, adapter_base=base)


def load_model(
    source: ModelSource | str,
    *,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Any:
    """A causal LM (adapter merged) in eval mode; ``dtype=None`` keeps the checkpoint's dtype."""
    from transformers import AutoModelForCausalLM

    if isinstance(source, str):
        source = locate(source)
    root = source.config_dir
    safetensors_files(root, allow_pickle)  # refuses pickle-only folders up front
    kwargs: dict[str, Any] = dict(trust_remote_code=trust_remote_code, use_safetensors=not allow_pickle or None)
    if dtype is not None:
        kwargs["dtype"] = dtype
    else:
        kwargs["dtype"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(root), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFolderError(f"Could not load a causal LM from {root}: {str(exc).splitlines()[0]}") from None
    if source.adapter_base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(source.path)).merge_and_unload()
    model.eval()
    return model


def load_tokenizer(source: ModelSource | str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer (an adapter's own first), with a pad token so batches can be padded."""
    from transformers import AutoTokenizer

    if isinstance(source, str):
        source = locate(source)
    for d in ([source.path] if source.adapter_base is not None else []) + [source.config_dir]:
        if (d / "tokenizer_config.json").is_file() or (d / "tokenizer.json").is_file():
            tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=trust_remote_code)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            return tok
    raise ModelFolderError(f"No tokenizer files in {source.config_dir}.")


def open_checkpoint(
    source: ModelSource, *, allow_pickle: bool = False, dtype: torch.dtype | None = None
) -> LazyCheckpoint | AdapterCheckpoint:
    """Tensor-by-tensor access to a model's weights; an adapter is merged into each tensor as it is read.

    Neither form ever holds the whole model: see :mod:`surgery.adapter_merge` for how (and which) PEFT
    adapters are merged. ``dtype`` is the dtype an adapter's base is read in before merging.
    """
    if source.adapter_base is None:
        return LazyCheckpoint.from_dir(source.path, allow_pickle)
    return AdapterCheckpoint(
        safetensors_files(source.adapter_base, allow_pickle), source.path, source.adapter_base, allow_pickle, dtype
    )


def copy_side_files(src_dirs: list[Path], dst: Path) -> None:
    """Config, generation config and tokenizer files, first found wins (adapter before base)."""
    for name in SIDE_FILES:
        for d in src_dirs:
            if (d / name).is_file():
                shutil.copy2(d / name, dst / name)
                break


#: torch dtype -> safetensors dtype name (the format's own spelling)
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


class _ShardFile:
    """One safetensors shard written as tensors arrive: memory holds one tensor, never the shard.

    Tensor bytes go to a body file beside the shard as they come; :meth:`finish` writes the header
    (tensors ordered as safetensors orders them: larger elements first, then by name, which keeps
    every tensor aligned) and copies the body into place in the kernel (``os.copy_file_range``) or
    in 1 MiB chunks.
    """

    def __init__(self, path: Path):
        self.path = path
        self.body_path = path.with_name(path.name + ".body")
        self.body = open(self.body_path, "wb")  # closed in finish(), or by _write_shards on an error
        self.entries: list[tuple[str, torch.Tensor, int, int]] = []  # name, meta tensor, start, end
        self.size = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        t = t.detach().cpu().contiguous()
        if t.dtype not in SAFETENSORS_DTYPES:
            raise ModelFolderError(f"Tensor {name} has dtype {t.dtype}, which safetensors cannot store.")
        nbytes = t.numel() * t.element_size()
        if nbytes:
            self.body.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self.entries.append((name, torch.empty(t.shape, dtype=t.dtype, device="meta"), self.size, self.size + nbytes))
        self.size += nbytes

    def finish(self) -> list[str]:
        """Write the shard (header, then the body in safetensors order); returns the tensor names."""
        self.body.close()
        order = sorted(self.entries, key=lambda e: (-e[1].element_size(), e[0]))
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, meta, start, end in order:
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[meta.dtype],
                "shape": list(meta.shape),
                "data_offsets": [offset, offset + end - start],
            }
            offset += end - start
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the safetensors writer pads it
        with open(self.path, "wb") as out, open(self.body_path, "rb") as body:
            out.write(struct.pack("<Q", len(raw)) + raw)
            for _, _, start, end in order:
                _copy_range(body, out, start, end - start)
        self.body_path.unlink()
        return [e[0] for e in self.entries]


def _copy_range(src: Any, dst: Any, start: int, length: int) -> None:
    """``length`` bytes of ``src`` from ``start`` appended to ``dst``, without holding them in memory."""
    dst.flush()
    copied = 0
    if hasattr(os, "copy_file_range"):
        try:
            while copied < length:
                n = os.copy_file_range(src.fileno(), dst.fileno(), length - copied, start + copied)
                if n == 0:
                    break
                copied += n
        except OSError:  # not supported between these file systems: fall back to reading chunks
            pass
    dst.seek(0, os.SEEK_END)
    src.seek(start + copied)
    while copied < length:
        chunk = src.read(min(1 << 20, length - copied))
        if not chunk:
            raise ModelFolderError(f"{src.name} ended early while its shard was being written.")
        dst.write(chunk)
        copied += len(chunk)


def _write_shards(tensors: Iterator[tuple[str, torch.Tensor]], folder: Path, max_shard_bytes: int) -> None:
    """Weights as HF-named safetensors shards (plus the index when there are several) in ``folder``.

    Each tensor is written out as it arrives (:class:`_ShardFile`), so memory holds one tensor, not a
    shard, let alone the model; a shard is closed when the next tensor would take it over
    ``max_shard_bytes``.
    """
    written: list[tuple[Path, list[str]]] = []
    shard: _ShardFile | None = None
    total = 0

    def flush(s: _ShardFile) -> None:
        written.append((s.path, s.finish()))

    try:
        for name, t in tensors:
            nbytes = t.numel() * t.element_size()
            if shard is not None and shard.entries and shard.size + nbytes > max_shard_bytes:
                flush(shard)
                shard = None
            if shard is None:
                shard = _ShardFile(folder / f"part-{len(written):05d}.safetensors")
            shard.add(name, t)
            total += nbytes
            del t
    except BaseException:
        if shard is not None:
            shard.body.close()  # the caller's atomic folder removes the files
        raise
    if shard is not None or not written:
        flush(shard if shard is not None else _ShardFile(folder / f"part-{len(written):05d}.safetensors"))
    n = len(written)
    weight_map = {}
    for i, (part, names) in enumerate(written):
        fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.replace(part, folder / fname)
        weight_map.update({k: fname for k in names})
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_safetensors_folder(
    tensors: Iterator[tuple[str, torch.Tensor]],
    out_dir: Path,
    side_dirs: list[Path],
    max_shard_bytes: int = 2 * 1024**3,
    extra_files: dict[str, str] | None = None,
) -> None:
    """Write a standard HF folder atomically (:func:`surgery.atomic.atomic_folder`), never over existing files."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelFolderError(f"Output folder {out_dir} exists and is not empty; choose another or remove it.")
    with atomic_folder(out_dir) as tmp:
        _write_shards(tensors, tmp, max_shard_bytes)
        copy_side_files(side_dirs, tmp)
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text, encoding="utf-8")
