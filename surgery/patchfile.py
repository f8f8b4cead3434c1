"""The patch file: one self-describing, column-sparse ``.safetensors`` — the contract users ship.

Layout, for every touched weight N (canonical out x in orientation, even for GPT-2's Conv1D):
- ``N::cols`` int32 sorted input-column indices and ``N::values`` (out x k) in the model's dtype, or
- ``N::rows`` / ``N::values`` (k x in) when neurons are output rows.
``__metadata__`` holds ``format=surgery-patch``, ``format_version`` and ``manifest`` (JSON): tool,
models, the sha256 of every SFT tensor the patch expects and of every tensor it produces, every
option, calibration fingerprints and statistics. No timestamps, so equal inputs give equal bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_file
from .errors import SurgeryError
from .modelio import tensor_sha256

FORMAT = "surgery-patch"
FORMAT_VERSION = "1"


@dataclass
class PatchEntry:
    """One touched weight: which neurons, their new values, and the fingerprints around them."""

    weight: str
    unit: str  # "cols" | "rows"
    index: torch.Tensor  # int32, sorted
    values: torch.Tensor  # canonical orientation, model dtype
    transposed: bool  # stored weight is (in x out), GPT-2 Conv1D
    sft_sha256: str
    patched_sha256: str
    shape: tuple[int, ...]  # stored shape


def splice(stored_weight: torch.Tensor, entry: PatchEntry) -> torch.Tensor:
    """The patched tensor: a copy of the SFT tensor with the patch's neurons overwritten (bit-exact)."""
    w = stored_weight.clone()
    canon = w.t() if entry.transposed else w
    idx = entry.index.long()
    vals = entry.values.to(w.dtype)
    if entry.unit == "cols":
        canon[:, idx] = vals
    else:
        canon[idx, :] = vals
    return w


def make_entry(weight: str, stored_sft: torch.Tensor, canonical_new: torch.Tensor, index: torch.Tensor,
               unit: str, transposed: bool) -> PatchEntry:
    """Cast the new neuron values to the SFT dtype and fingerprint input and output."""
    idx = index.to(torch.int32).sort().values
    if unit == "cols":
        values = canonical_new[:, idx.long()].to(stored_sft.dtype).contiguous()
    else:
        values = canonical_new[idx.long(), :].to(stored_sft.dtype).contiguous()
    entry = PatchEntry(weight, unit, idx, values, transposed, tensor_sha256(stored_sft), "", tuple(stored_sft.shape))
    entry.patched_sha256 = tensor_sha256(splice(stored_sft, entry))
    return entry


_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _serialize_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Byte-for-byte reproducible safetensors: sorted header keys and tensor order.

    (The safetensors library writes ``__metadata__`` from a hash map, whose order changes between runs.)
    """
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        if t.dtype not in _ST_DTYPES:
            raise ValueError(f"cannot store dtype {t.dtype}")
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def write_patch(path: str | Path, entries: list[PatchEntry], manifest: dict) -> None:
    """Write atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    manifest = dict(manifest)
    manifest["tensors"] = {}
    for e in sorted(entries, key=lambda e: e.weight):
        tensors[f"{e.weight}::{e.unit}"] = e.index.to(torch.int32).contiguous()
        tensors[f"{e.weight}::values"] = e.values.contiguous()
        manifest["tensors"][e.weight] = {
            "unit": e.unit,
            "count": int(e.index.numel()),
            "transposed": e.transposed,
            "shape": list(e.shape),
            "dtype": str(e.values.dtype).replace("torch.", ""),
            "sft_sha256": e.sft_sha256,
            "patched_sha256": e.patched_sha256,
        }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "manifest": json.dumps(manifest, sort_keys=True, separators=(",", ":")),
    }
    with atomic_file(path) as tmp:
        tmp.write_bytes(_serialize_safetensors(tensors, meta))


def read_manifest(path: str | Path) -> dict:
    """The manifest of a patch; any corruption or foreign file is one clear error."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SurgeryError(f"Patch file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as h:
            meta = h.metadata() or {}
    except Exception:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise SurgeryError(f"{path} is not a readable safetensors file (corrupt or truncated patch).") from None
    if meta.get("format") != FORMAT:
        raise SurgeryError(f"{path} is a safetensors file but not a surgery patch (format={meta.get('format')!r}).")
    if meta.get("format_version") != FORMAT_VERSION:
        raise SurgeryError(
            f"{path} has patch format version {meta.get('format_version')}; this surgery reads version {FORMAT_VERSION}."
        )
    try:
        return json.loads(meta["manifest"])
    except (KeyError, json.JSONDecodeError):
        raise SurgeryError(f"{path} has a damaged manifest.") from None


def read_patch(path: str | Path) -> tuple[dict, list[PatchEntry]]:
    from safetensors import safe_open

    manifest = read_manifest(path)
    entries = []
    try:
        with safe_open(str(path), framework="pt") as h:
            keys = set(h.keys())
            for weight, info in sorted(manifest["tensors"].items()):
                unit = info["unit"]
                ik, vk = f"{weight}::{unit}", f"{weight}::values"
                if ik not in keys or vk not in keys:
                    raise SurgeryError(f"{path} lacks the tensors for {weight} named in its manifest (damaged patch).")
                index, values = h.get_tensor(ik), h.get_tensor(vk)
                if index.numel() != info["count"]:
                    raise SurgeryError(f"{path}: {weight} has {index.numel()} indices, manifest says {info['count']}.")
                entries.append(PatchEntry(weight, unit, index, values, bool(info["transposed"]),
                                          info["sft_sha256"], info["patched_sha256"], tuple(info["shape"])))
    except SurgeryError:
        raise
    except Exception:  # noqa: BLE001
        raise SurgeryError(f"{path} could not be read completely (corrupt or truncated patch).") from None
    return manifest, entries


def apply_entry(stored_sft: torch.Tensor, entry: PatchEntry) -> torch.Tensor:
    """Check the fingerprints on both sides of the splice; any mismatch is a user-facing error."""
    if tuple(stored_sft.shape) != entry.shape:
        raise SurgeryError(
            f"Shape mismatch for {entry.weight}: the model has {tuple(stored_sft.shape)}, the patch expects {entry.shape}."
        )
    if tensor_sha256(stored_sft) != entry.sft_sha256:
        raise SurgeryError(
            f"{entry.weight} differs from the tensor this patch was made for: the patch belongs to another model "
            "(or the model was changed since)."
        )
    out = splice(stored_sft, entry)
    if tensor_sha256(out) != entry.patched_sha256:
        raise SurgeryError(f"Patched {entry.weight} does not match the patch's fingerprint: the patch file is damaged.")
    return out
