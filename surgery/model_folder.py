"""Model-folder validation in one place: every command that reads a model folder goes through these checks.

A model folder may come from anyone, so its JSON files, its index, its safetensors headers, the shapes
its config promises and the finiteness of the weights a command reads are checked here, each failure
becoming one :class:`ModelFolderError` sentence that names the file (or tensor) at fault.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from .errors import ModelFolderError
from .linear_layers import is_block_linear_weight

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
#: a safetensors header larger than this is not a real checkpoint's (the format's own limit is 100 MB)
MAX_HEADER_BYTES = 100 * 1024 * 1024
_EMBEDDING_LEAVES = ("embed_tokens.weight", "wte.weight")


def read_json_object(path: Path) -> dict[str, Any]:
    """``path`` parsed as a JSON object, or one sentence naming the file and what is wrong with it."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ModelFolderError(f"Could not read {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise ModelFolderError(f"{path} is not UTF-8 text.") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({getattr(exc, 'msg', 'too deeply nested')}).") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} is not a JSON object.")
    return data


def flat_config(path: Path) -> dict[str, Any]:
    """config.json with a multimodal ``text_config`` folded in (top-level keys win)."""
    cfg = read_json_object(path)
    text = cfg.get("text_config") or {}
    if not isinstance(text, dict):
        raise ModelFolderError(f"{path}: text_config is not a JSON object.")
    return {**text, **{k: v for k, v in cfg.items() if k != "text_config"}}


def _allowed_roots(folder: Path) -> list[Path]:
    """Where a folder's files may really live: the folder, and for a hub-cache snapshot its repo's blobs."""
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":
        roots.append((folder.parent.parent / "blobs").resolve())
    return roots


def confined(folder: Path, name: str) -> Path:
    """``folder / name`` when ``name`` names a file inside ``folder`` (symlinks followed), else refused."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name or "\0" in name:
        raise ModelFolderError(f"{folder / 'model.safetensors.index.json'} names a shard outside the folder: {name!r}.")
    path = folder / name
    real = path.resolve()
    if not any(real == r or r in real.parents for r in _allowed_roots(folder)):
        raise ModelFolderError(f"Shard {path} is a link to a file outside the model folder ({real}); refused.")
    return path


def index_shards(index: Path, allow_pickle: bool) -> list[str]:
    """The shard names a ``model.safetensors.index.json`` maps tensors to, each checked."""
    data = read_json_object(index)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFolderError(f"{index} has no weight_map object naming the shards.")
    for key, value in weight_map.items():
        if not isinstance(value, str):
            raise ModelFolderError(f"{index}: the weight_map entry for {key!r} is not a file name.")
    names = sorted(set(weight_map.values()))
    for name in names:
        confined(index.parent, name)
        if Path(name).suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise ModelFolderError(
                f"{index} names a pickle shard ({name}); pickle can run arbitrary code, so it is refused. "
                "Convert it to safetensors, or pass --allow-pickle if you trust the file."
            )
    return names


def safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, after checking the file is complete."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or n > min(MAX_HEADER_BYTES, size - 8):
                raise ModelFolderError(f"{path} is truncated or not a safetensors file (bad header length).")
            raw = f.read(n)
    except OSError as exc:
        raise ModelFolderError(f"Could not read {path}: {exc.strerror or exc}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ModelFolderError(f"{path} has a corrupt safetensors header.") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path} has a corrupt safetensors header.")
    shapes, end = _header_shapes(path, header)
    if end != size - 8 - n:
        raise ModelFolderError(
            f"{path} is truncated or padded: its header describes {end} data bytes, it has {size - 8 - n}."
        )
    return shapes


def _header_shapes(path: Path, header: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], int]:
    """Shapes and the end of the data the header describes, every entry's fields checked."""
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        ok = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
        if not ok or offsets[0] > offsets[1]:
            raise ModelFolderError(f"{path} has a corrupt safetensors header (entry {name!r}).")
        shapes[name] = tuple(shape)
        end = max(end, offsets[1])
    return shapes, end


def check_shapes_against_config(config_path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Tensors agree with the config's width: embeddings are (vocab, hidden), block linears touch hidden."""
    cfg = flat_config(config_path)
    hidden = cfg.get("hidden_size", cfg.get("n_embd"))
    vocab = cfg.get("vocab_size")
    if not isinstance(hidden, int):
        return
    for name, shape in shapes.items():
        if name.endswith(_EMBEDDING_LEAVES) and len(shape) == 2:
            want = (vocab, hidden) if isinstance(vocab, int) else (shape[0], hidden)
            if shape != want:
                raise ModelFolderError(
                    f"Tensor {name} has shape {shape} but {config_path} says {want} (vocab_size, hidden_size)."
                )
        elif len(shape) == 2 and is_block_linear_weight(name) and hidden not in shape:
            raise ModelFolderError(
                f"Tensor {name} has shape {shape}, which does not fit hidden_size {hidden} in {config_path}."
            )


def nonfinite(t: torch.Tensor) -> bool:
    """Whether a floating tensor holds NaN or Inf (integer tensors never do)."""
    return bool(t.is_floating_point() and not torch.isfinite(t).all())


def require_finite(name: str, t: torch.Tensor, where: object) -> torch.Tensor:
    """``t`` unchanged, or a refusal naming the tensor: NaN/Inf weights cannot be restored or patched."""
    if nonfinite(t):
        raise ModelFolderError(f"Tensor {name} of {where} holds NaN or Inf values; the model is broken, refused.")
    return t
