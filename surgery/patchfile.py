"""The patch file: one self-describing, column-sparse ``.safetensors`` — the contract users ship.

Layout, for every touched weight N (canonical out x in orientation, even for GPT-2's Conv1D):
- ``N::cols`` int32 sorted input-column indices and ``N::values`` (out x k) in the model's dtype, or
- ``N::rows`` / ``N::values`` (k x in) when neurons are output rows.
``__metadata__`` holds ``format=surgery-patch``, ``format_version``, ``payload_sha256`` (the sha256 of the
whole data section: every tensor's bytes in sorted-name order, which is file order) and ``manifest`` (JSON):
tool, models, the sha256 of every SFT tensor the patch expects and of every tensor it produces, every option,
calibration fingerprints and statistics. No timestamps, so equal inputs give equal bytes.

Format versions: 2 adds ``payload_sha256``, which every reader checks first, so a patch damaged in transit is
refused with one sentence before any tensor is looked at. Version 1 files (no digest) are still read: the
digest only detects damage early, and they pass every other check below. Version 3 is an *encoded* patch
(:mod:`surgery.patch_encoding`): the manifest records ``encoding`` (``bf16`` or ``int8``) and each weight
stores ``N::delta`` (new − SFT on its neurons, bfloat16 or int8) and, for int8, ``N::scale`` (float32, one
per neuron) instead of ``N::values``; the record's ``dtype`` stays the model's. A ``full`` patch is still
written as version 2, byte for byte as before, and the version and the encoding must agree.

The manifest is the typed :class:`PatchManifest` (with :class:`PatchStats` and one :class:`TensorRecord`
per weight), written only by :func:`write_patch` and read only by :func:`read_manifest` /
:func:`read_patch`, which check every field's type (a wrong one is one :class:`PatchFormatError`).

A patch may come from a stranger, so :func:`read_patch` validates everything before any model is touched:
the file's tensors are exactly the manifest's, every index is int32, 1-D, strictly increasing and inside the
recorded matrix, every values tensor has the recorded dtype, the shape its index, unit, recorded shape and
orientation imply, and only finite entries. :func:`splice` and :func:`apply_entry` check the model's tensor
(shape, dtype, fingerprint) before writing into a copy of it, and the result's fingerprint and finiteness after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .atomic import atomic_file
from .errors import ArchitectureMismatch, FingerprintMismatch, ModelFolderError, PatchFormatError, SurgeryError
from .modelio import SAFETENSORS_DTYPES, tensor_sha256
from .patch_encoding import DELTA_DTYPES, ENCODINGS, SCALE_DTYPE, check_payload, decode_values, neurons
from .revision import check_revisions

FORMAT = "surgery-patch"
FORMAT_VERSION = "2"
#: the version of an encoded (bf16/int8) patch; full patches stay at FORMAT_VERSION
ENCODED_FORMAT_VERSION = "3"
#: versions this reader accepts: 1 has no payload digest, 3 is encoded (see the module docstring)
READABLE_VERSIONS = ("1", "2", "3")
#: the ``__metadata__`` key of the data section's sha256 (beside the manifest, not inside it)
PAYLOAD_KEY = "payload_sha256"

#: what reading a damaged or truncated safetensors file raises
_UNREADABLE = (SafetensorError, OSError, RuntimeError, ValueError)


@dataclass
class PatchEntry:
    """One touched weight: which neurons, their new values (or encoded change), and the fingerprints around them.

    ``encoding`` ``full``: ``values`` are the new neuron values in the model's dtype. ``bf16``/``int8``:
    ``values`` is the stored delta against the SFT neurons (bfloat16, or int8 with ``scale``, one float32 per
    neuron) and ``dtype`` the model's dtype (:mod:`surgery.patch_encoding`)."""

    weight: str
    unit: str  # "cols" | "rows"
    index: torch.Tensor  # int32, sorted
    values: torch.Tensor  # canonical orientation: model dtype (full) or the encoded delta
    transposed: bool  # stored weight is (in x out), GPT-2 Conv1D
    sft_sha256: str
    patched_sha256: str
    shape: tuple[int, ...]  # stored shape
    encoding: str = "full"
    scale: torch.Tensor | None = None  # int8 only: (k,) float32
    dtype: torch.dtype | None = None  # the model's dtype; None means values.dtype (full)

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype of the weight this entry patches (and of its decoded values)."""
        return self.dtype if self.dtype is not None else self.values.dtype

    def new_values(self, stored_weight: torch.Tensor) -> torch.Tensor:
        """The new neuron values in the weight's dtype: stored (full) or decoded against ``stored_weight``."""
        if self.encoding == "full":
            return self.values.to(stored_weight.dtype)
        canon = stored_weight.t() if self.transposed else stored_weight
        vals = decode_values(neurons(canon, self.index, self.unit), self.values, self.scale, self.unit)
        if not bool(torch.isfinite(vals).all()):
            raise PatchFormatError(
                f"{self.weight}: the encoded change decodes to NaN or Inf (damaged or hostile patch)."
            )
        return vals


def splice(stored_weight: torch.Tensor, entry: PatchEntry) -> torch.Tensor:
    """The patched tensor: a copy of the SFT tensor with the patch's neurons overwritten (bit-exact).

    The entry's shape, index and values are checked against the tensor first (one :class:`SurgeryError`).
    """
    check_fits(stored_weight, entry)
    w = stored_weight.clone()
    canon = w.t() if entry.transposed else w
    idx = entry.index.long()
    vals = entry.new_values(stored_weight)
    if entry.unit == "cols":
        canon[:, idx] = vals
    else:
        canon[idx, :] = vals
    return w


#: the dtypes patch values may have: the name a manifest records -> the torch dtype
VALUE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
UNITS = ("cols", "rows")


def canonical_shape(shape: tuple[int, ...], transposed: bool) -> tuple[int, int]:
    """The (out, in) shape of a stored matrix (stored as in x out when ``transposed``, GPT-2's Conv1D)."""
    rows, cols = shape
    return (cols, rows) if transposed else (rows, cols)


def check_entry(entry: PatchEntry, where: str = "") -> None:
    """An entry's index and values agree with its recorded shape, unit and orientation; values are finite
    (encoded entries: the delta's dtype and the scales, :func:`surgery.patch_encoding.check_payload`)."""
    _check_layout(entry, where)
    if entry.encoding != "full":
        check_payload(f"{where}{entry.weight}", entry.encoding, entry.values, entry.scale, entry.unit)
        return
    if not bool(torch.isfinite(entry.values).all()):
        raise PatchFormatError(f"{where}{entry.weight}::values contains NaN or Inf (damaged or hostile patch).")


def check_fits(stored_weight: torch.Tensor, entry: PatchEntry) -> None:
    """The entry can be spliced into ``stored_weight``: same shape, index in range, values of the right shape."""
    if tuple(stored_weight.shape) != entry.shape:
        raise ArchitectureMismatch(
            f"Shape mismatch for {entry.weight}: the model has {tuple(stored_weight.shape)}, "
            f"the patch expects {entry.shape}."
        )
    _check_layout(entry, "")


def _check_layout(entry: PatchEntry, where: str) -> None:
    name = f"{where}{entry.weight}"
    if len(entry.shape) != 2 or entry.unit not in UNITS:
        raise PatchFormatError(f"{name}: a patch entry must be the {'/'.join(UNITS)} of a matrix.")
    idx, key = entry.index, f"{name}::{entry.unit}"
    if idx.dtype != torch.int32 or idx.dim() != 1 or idx.numel() == 0:
        raise PatchFormatError(
            f"{key} must be a non-empty 1-D int32 tensor, not {str(idx.dtype).replace('torch.', '')} "
            f"of shape {tuple(idx.shape)}."
        )
    out_dim, in_dim = canonical_shape(entry.shape, entry.transposed)
    bound = in_dim if entry.unit == "cols" else out_dim
    if int(idx.min()) < 0 or int(idx.max()) >= bound:
        raise PatchFormatError(f"{key} has an index outside 0..{bound - 1} (the matrix has {bound} {entry.unit}).")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise PatchFormatError(f"{key} is not strictly increasing (indices must be sorted and unique).")
    k = int(idx.numel())
    want = (out_dim, k) if entry.unit == "cols" else (k, in_dim)
    if entry.encoding not in ENCODINGS:
        raise PatchFormatError(f"{name}: encoding must be one of {', '.join(ENCODINGS)}, not {entry.encoding!r}.")
    stored = "values" if entry.encoding == "full" else "delta"
    if tuple(entry.values.shape) != want:
        raise PatchFormatError(
            f"{name}::{stored} has shape {tuple(entry.values.shape)}; {k} {entry.unit} of the stored "
            f"{entry.shape} matrix (transposed={entry.transposed}) need {want}."
        )
    if entry.model_dtype not in VALUE_DTYPES.values():
        raise PatchFormatError(f"{name}::values has dtype {entry.model_dtype}, not a floating-point dtype.")


def make_entry(
    weight: str, stored_sft: torch.Tensor, canonical_new: torch.Tensor, index: torch.Tensor, unit: str, transposed: bool
) -> PatchEntry:
    """Cast the new neuron values to the SFT dtype and fingerprint input and output."""
    idx = index.to(torch.int32).sort().values
    if unit == "cols":
        values = canonical_new[:, idx.long()].to(stored_sft.dtype).contiguous()
    else:
        values = canonical_new[idx.long(), :].to(stored_sft.dtype).contiguous()
    entry = PatchEntry(weight, unit, idx, values, transposed, tensor_sha256(stored_sft), "", tuple(stored_sft.shape))
    entry.patched_sha256 = tensor_sha256(splice(stored_sft, entry))
    return entry


def payload_sha256(blobs: Iterable[bytes]) -> str:
    """The sha256 of a patch's data section: the tensors' bytes concatenated in sorted-name (file) order.

    One function, so that every writer (whole-file or streamed) records the digest the reader recomputes.
    """
    h = hashlib.sha256()
    for blob in blobs:
        h.update(blob)
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """The bytes safetensors stores for ``t`` (little-endian, C order)."""
    return t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes() if t.numel() else b""


TensorSpec = tuple[str, torch.dtype, tuple[int, ...]]  # (name, dtype, shape)


def _header(specs: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    """The safetensors header of tensors written in ``specs`` order: sorted keys, padded to 8 bytes.

    (The safetensors library writes ``__metadata__`` from a hash map, whose order changes between runs.)
    """
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, dtype, shape in specs:
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"cannot store dtype {dtype}")
        size = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head


def _serialize_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Byte-for-byte reproducible safetensors: sorted header keys and tensor order."""
    names = sorted(tensors)
    specs = [(n, tensors[n].dtype, tuple(tensors[n].shape)) for n in names]
    return _header(specs, metadata) + b"".join(_tensor_bytes(tensors[n]) for n in names)


@dataclass(frozen=True)
class TensorRecord:
    """What the manifest says about one touched weight (the tensors themselves are beside it)."""

    unit: str  # "cols" | "rows"
    count: int
    transposed: bool
    shape: list[int]  # stored shape
    dtype: str  # e.g. "float32"
    sft_sha256: str
    patched_sha256: str

    @classmethod
    def of(cls, e: PatchEntry) -> TensorRecord:
        """The record of an entry about to be written (``dtype`` is the model's, whatever the encoding)."""
        return cls(
            e.unit,
            int(e.index.numel()),
            e.transposed,
            list(e.shape),
            str(e.model_dtype).replace("torch.", ""),
            e.sft_sha256,
            e.patched_sha256,
        )

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TensorRecord:
        """One ``tensors`` entry parsed from the manifest, every field type-checked."""
        d = _object(data, where)
        unit = _get(d, "unit", str, where)
        if unit not in UNITS:
            raise PatchFormatError(f"{where}: unit must be 'cols' or 'rows', not {unit!r}.")
        shape = _get(d, "shape", list, where)
        if len(shape) != 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 < n < _MAX_INT for n in shape
        ):
            raise PatchFormatError(f"{where}: shape must be a list of two positive integers (a matrix).")
        count = _get(d, "count", int, where)
        if count == 0:
            raise PatchFormatError(f"{where}: field 'count' is 0; a patched weight has at least one neuron.")
        dtype = _get(d, "dtype", str, where)
        if dtype not in VALUE_DTYPES:
            raise PatchFormatError(f"{where}: field 'dtype' is {dtype!r}, not one of {', '.join(VALUE_DTYPES)}.")
        fingerprints = [_get(d, k, str, where) for k in ("sft_sha256", "patched_sha256")]
        if not all(_SHA256.fullmatch(f) for f in fingerprints):
            raise PatchFormatError(f"{where}: sft_sha256 and patched_sha256 must be sha256 hex digests.")
        return cls(unit, count, _get(d, "transposed", bool, where), shape, dtype, *fingerprints)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def specs(self, weight: str, encoding: str = "full") -> list[TensorSpec]:
        """Name, dtype and shape of the tensors this record stands for: the index and the values (``full``),
        or the index, the delta and (int8) the per-neuron scales."""
        out_f, in_f = canonical_shape(tuple(self.shape), self.transposed)
        values = (out_f, self.count) if self.unit == "cols" else (self.count, in_f)
        index: TensorSpec = (f"{weight}::{self.unit}", torch.int32, (self.count,))
        if encoding == "full":
            return [index, (f"{weight}::values", VALUE_DTYPES[self.dtype], values)]
        specs = [index, (f"{weight}::delta", DELTA_DTYPES[encoding], values)]
        return specs + ([(f"{weight}::scale", SCALE_DTYPE, (self.count,))] if encoding == "int8" else [])


@dataclass(frozen=True)
class MatrixDrift:
    """Output drift tr(D H Dᵀ) on calibration inputs of one matrix: SFT, restored, patched; None if not finite."""

    drift_sft: float | None
    drift_restored: float | None
    drift_patched: float | None
    damp: float | None  # the relative damping that succeeded

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> MatrixDrift:
        return cls(*(_get(d, k, _OPT_NUMBER, where) for k in ("drift_sft", "drift_restored", "drift_patched", "damp")))


@dataclass(frozen=True)
class MatrixStats:
    """How one matrix was patched. ``drift`` is None where nothing was measured (rows restored plainly)."""

    neurons: int
    parameters: int
    method: str
    drift: MatrixDrift | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> MatrixStats:
        d = _object(data, where)
        drift = MatrixDrift.from_dict(d, where) if "drift_sft" in d else None
        return cls(
            _get(d, "neurons", int, where), _get(d, "parameters", int, where), _get(d, "method", str, where), drift
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"neurons": self.neurons, "parameters": self.parameters, "method": self.method}
        if self.drift is not None:
            out.update(dataclasses.asdict(self.drift))
        return out


@dataclass(frozen=True)
class PatchStats:
    """How much a patch changes and how well the compensation did, as recorded in its manifest."""

    parameters_changed: int
    share_of_linear: float
    share_of_model: float
    linear_parameters: int
    model_parameters: int
    matrices_total: int
    matrices_touched: int
    fallbacks: list[str]
    hessian_tokens: int
    hessian_groups: int
    residual_ratio: float | None
    per_matrix: dict[str, MatrixStats]
    unit_scores: dict[str, float]

    @classmethod
    def from_dict(cls, data: Any, where: str) -> PatchStats:
        """The stats parsed from the manifest, every field type-checked."""
        d = _object(data, where)
        ints = {
            k: _get(d, k, int, where)
            for k in (
                "parameters_changed",
                "linear_parameters",
                "model_parameters",
                "matrices_total",
                "matrices_touched",
                "hessian_tokens",
                "hessian_groups",
            )
        }
        fallbacks = _get(d, "fallbacks", list, where)
        if not all(isinstance(f, str) for f in fallbacks):
            raise PatchFormatError(f"{where}: fallbacks must be a list of weight names.")
        per_matrix = {
            k: MatrixStats.from_dict(v, f"{where}.per_matrix.{k}")
            for k, v in _get(d, "per_matrix", dict, where).items()
        }
        scores = _get(d, "unit_scores", dict, where)
        unit_scores = {k: _get(scores, k, _NUMBER, f"{where}.unit_scores") for k in scores}
        return cls(
            **ints,
            share_of_linear=_get(d, "share_of_linear", _NUMBER, where),
            share_of_model=_get(d, "share_of_model", _NUMBER, where),
            fallbacks=fallbacks,
            residual_ratio=_get(d, "residual_ratio", _OPT_NUMBER, where),
            per_matrix=per_matrix,
            unit_scores=unit_scores,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["fallbacks"] = list(self.fallbacks)
        out["per_matrix"] = {k: m.to_dict() for k, m in self.per_matrix.items()}
        out["unit_scores"] = dict(self.unit_scores)
        return out


@dataclass(frozen=True)
class PatchManifest:
    """The ``manifest`` of a patch file: who made it, from what, with which options, and what it touches."""

    tool: str
    tool_version: str
    method: str
    base: str
    sft: str
    options: dict[str, Any]
    calibration: dict[str, Any]  # role -> {"file", "sha256", "bytes"}
    stats: PatchStats | None = None
    tensors: dict[str, TensorRecord] = field(default_factory=dict)
    compute: dict[str, Any] | None = None  # where it was computed: dtype, device type, world size
    preset: str | None = None  # the named option set the options started from (surgery patch --preset)
    encoding: str = "full"  # how the values are stored (surgery.patch_encoding); recorded unless full
    revisions: dict[str, dict[str, Any]] | None = None  # role -> hub commit or folder fingerprint (revision.py)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> PatchManifest:
        """The manifest parsed from its JSON object, every field type-checked (``where`` names it in errors)."""
        d = _object(data, where)
        strings = {k: _get(d, k, str, where) for k in ("tool", "tool_version", "method", "base", "sft")}
        stats = d.get("stats")
        tensors = {
            k: TensorRecord.from_dict(v, f"{where}.tensors.{k}") for k, v in _get(d, "tensors", dict, where).items()
        }
        encoding = _get(d, "encoding", str, where) if "encoding" in d else "full"
        if encoding not in ENCODINGS:
            raise PatchFormatError(f"{where}: encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}.")
        return cls(
            **strings,
            options=_get(d, "options", dict, where),
            calibration=_calibration(_get(d, "calibration", dict, where), f"{where}.calibration"),
            stats=None if stats is None else PatchStats.from_dict(stats, f"{where}.stats"),
            tensors=tensors,
            compute=_get(d, "compute", dict, where) if "compute" in d else None,
            preset=_get(d, "preset", str, where) if "preset" in d else None,
            encoding=encoding,
            revisions=check_revisions(d["revisions"], f"{where}.revisions") if "revisions" in d else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest as the JSON object stored in the file (no ``stats`` key when there are none)."""
        out: dict[str, Any] = {
            "tool": self.tool,
            "tool_version": self.tool_version,
            "method": self.method,
            "base": self.base,
            "sft": self.sft,
            "options": dict(self.options),
            "calibration": dict(self.calibration),
        }
        if self.stats is not None:
            out["stats"] = self.stats.to_dict()
        out["tensors"] = {k: t.to_dict() for k, t in self.tensors.items()}
        if self.compute is not None:
            out["compute"] = dict(self.compute)
        if self.preset is not None:  # absent unless named, so a library patch keeps its bytes
            out["preset"] = self.preset
        if self.encoding != "full":  # full patches keep the bytes they had before encodings existed
            out["encoding"] = self.encoding
        if self.revisions is not None:
            out["revisions"] = {k: dict(v) for k, v in self.revisions.items()}
        return out


_MISSING = object()
_NUMBER: tuple[type, ...] = (int, float)
_OPT_NUMBER: tuple[type, ...] = (int, float, type(None))
#: integer fields (counts, sizes) lie in 0 .. 2**63 - 1
_MAX_INT = 2**63
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _calibration(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``role -> {"file": str, "sha256": str, "bytes": int}``, each field type-checked."""
    for role, fp in data.items():
        d = _object(fp, f"{where}.{role}")
        _get(d, "file", str, f"{where}.{role}")
        _get(d, "sha256", str, f"{where}.{role}")
        _get(d, "bytes", int, f"{where}.{role}")
    return data


def _object(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PatchFormatError(f"{where} must be a JSON object (damaged patch manifest).")
    return data


def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``d[key]`` if present with type ``kind`` (a bool never passes for a number), else one clear error."""
    value = d.get(key, _MISSING)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is _MISSING or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise PatchFormatError(f"{where}: field '{key}' is missing or not {names} (damaged patch manifest).")
    if kind is int and isinstance(value, int) and not 0 <= value < _MAX_INT:
        raise PatchFormatError(f"{where}: field '{key}' is out of range (damaged patch manifest).")
    return value


_DIGEST_PLACEHOLDER = "0" * 64


def write_patch(path: str | Path, entries: list[PatchEntry], manifest: PatchManifest) -> PatchManifest:
    """Write atomically; the manifest's ``tensors`` are taken from ``entries``, whose encoding must be the
    manifest's. Returns what was written."""
    tensors: dict[str, torch.Tensor] = {}
    for e in entries:
        if e.encoding != manifest.encoding:
            raise ValueError(f"{e.weight} is encoded {e.encoding}, the manifest says {manifest.encoding}")
        tensors[f"{e.weight}::{e.unit}"] = e.index.to(torch.int32)
        tensors[f"{e.weight}::{'values' if e.encoding == 'full' else 'delta'}"] = e.values
        if e.scale is not None:
            tensors[f"{e.weight}::scale"] = e.scale
    records = {e.weight: TensorRecord.of(e) for e in entries}
    return write_patch_streamed(path, records, tensors.__getitem__, manifest)


def write_patch_streamed(
    path: str | Path,
    records: dict[str, TensorRecord],
    tensor: Callable[[str], torch.Tensor],
    manifest: PatchManifest,
) -> PatchManifest:
    """Write atomically, asking ``tensor(name)`` for one tensor at a time (``<weight>::cols|rows|values``, or
    ``delta`` and ``scale`` for an encoded manifest).

    The header is computed from the records alone, so a patch larger than memory is written from its
    parts with the same bytes :func:`write_patch` gives for the same entries.
    """
    written = dataclasses.replace(manifest, tensors=dict(sorted(records.items())))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if manifest.encoding == "full" else ENCODED_FORMAT_VERSION,
        "manifest": json.dumps(written.to_dict(), sort_keys=True, separators=(",", ":")),
        PAYLOAD_KEY: _DIGEST_PLACEHOLDER,  # the digest needs the data, which follows the header
    }
    specs = sorted(spec for weight, r in records.items() for spec in r.specs(weight, manifest.encoding))
    header = _header(specs, meta)
    digest = hashlib.sha256()
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        for name, dtype, shape in specs:
            t = tensor(name)
            if t.dtype != dtype or tuple(t.shape) != shape:
                raise ValueError(f"{name}: {t.dtype} {tuple(t.shape)} does not match its record ({dtype} {shape})")
            blob = _tensor_bytes(t)
            digest.update(blob)
            f.write(blob)
        slot = f'"{PAYLOAD_KEY}":"{_DIGEST_PLACEHOLDER}"'.encode()
        f.seek(header.index(slot) + len(slot) - len(_DIGEST_PLACEHOLDER) - 1)
        f.write(digest.hexdigest().encode())  # same length: the header's size and offsets stand
    return written


def read_manifest(path: str | Path) -> PatchManifest:
    """The manifest of a patch; any corruption or foreign file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise PatchFormatError(f"Patch file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as h:
            meta = h.metadata() or {}
    except _UNREADABLE:
        raise PatchFormatError(f"{path} is not a readable safetensors file (corrupt or truncated patch).") from None
    if meta.get("format") != FORMAT:
        raise PatchFormatError(f"{path} is a safetensors file but not a surgery patch (format={meta.get('format')!r}).")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise PatchFormatError(
            f"{path} has patch format version {meta.get('format_version')}; "
            f"this surgery reads versions {', '.join(READABLE_VERSIONS)}."
        )
    _check_payload(path, meta)
    try:
        data = json.loads(meta["manifest"])
    except (KeyError, ValueError, RecursionError):  # ValueError: bad JSON or an integer too long to parse
        raise PatchFormatError(f"{path} has a damaged manifest.") from None
    manifest = PatchManifest.from_dict(data, f"{path}: manifest")
    if (manifest.encoding != "full") != (meta["format_version"] == ENCODED_FORMAT_VERSION):
        raise PatchFormatError(
            f"{path} has patch format version {meta['format_version']} but its manifest records encoding "
            f"{manifest.encoding} (encoded patches are version {ENCODED_FORMAT_VERSION}, full ones older)."
        )
    return manifest


def _check_payload(path: Path, meta: dict[str, str]) -> None:
    """The data section hashes to the recorded ``payload_sha256`` (required from format version 2 on)."""
    recorded = meta.get(PAYLOAD_KEY)
    if recorded is None and meta.get("format_version") == "1":
        return  # version 1 had no digest; its tensors are still fully validated by read_patch
    if not isinstance(recorded, str) or not _SHA256.fullmatch(recorded):
        raise PatchFormatError(f"{path} lacks a valid {PAYLOAD_KEY} in its metadata (damaged patch).")
    actual = payload_sha256(_stored_blobs(path))
    if actual != recorded:
        raise PatchFormatError(
            f"{path}: its tensor data does not match the {PAYLOAD_KEY} recorded in it (damaged or altered patch)."
        )


def _stored_blobs(path: Path) -> Iterator[bytes]:
    """Every tensor's stored bytes, in sorted-name order (the order :func:`write_patch` lays them out in), read
    through the header's offsets, so the digest does not depend on how another writer ordered the tensors."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, RecursionError):
            raise PatchFormatError(f"{path} has a damaged safetensors header.") from None
        for name in sorted(k for k in header if k != "__metadata__"):
            start, end = header[name]["data_offsets"]
            f.seek(8 + header_len + start)
            remaining = end - start
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    raise PatchFormatError(f"{path} is truncated (corrupt patch).")
                remaining -= len(chunk)
                yield chunk


def read_patch(path: str | Path) -> tuple[PatchManifest, list[PatchEntry]]:
    """The manifest and every entry, all validated before any model is touched.

    The file's tensors are exactly the manifest's (an index and values per weight, nothing more or less), each
    index is int32, 1-D, strictly increasing and inside the recorded matrix, each values tensor has the recorded
    dtype, the shape the index, unit, shape and orientation imply, and finite entries. Anything else is one
    :class:`PatchFormatError` naming the tensor or field.
    """
    manifest = read_manifest(path)
    if not manifest.tensors:
        raise PatchFormatError(f"{path} touches no tensor (an empty patch).")
    try:
        with safe_open(str(path), framework="pt") as h:
            _check_tensor_names(path, manifest, set(h.keys()))
            entries = [
                _read_entry(h, path, weight, info, manifest.encoding)
                for weight, info in sorted(manifest.tensors.items())
            ]
    except SurgeryError:
        raise
    except _UNREADABLE:
        raise PatchFormatError(f"{path} could not be read completely (corrupt or truncated patch).") from None
    return manifest, entries


def _check_tensor_names(path: str | Path, manifest: PatchManifest, keys: set[str]) -> None:
    """Every tensor of the file belongs to a manifest record and every record has its tensors (two, or three
    for int8)."""
    expected = {spec[0] for w, info in manifest.tensors.items() for spec in info.specs(w, manifest.encoding)}
    stray, missing = sorted(keys - expected), sorted(expected - keys)
    if missing:
        raise PatchFormatError(f"{path} lacks the tensor {missing[0]} named in its manifest (damaged patch).")
    if stray:
        raise PatchFormatError(f"{path} holds a tensor {stray[0]} that its manifest does not name (damaged patch).")


def _read_entry(h: Any, path: str | Path, weight: str, info: TensorRecord, encoding: str = "full") -> PatchEntry:
    """One weight's entry, checked against its manifest record (``h`` is an open ``safe_open`` handle)."""
    index = h.get_tensor(f"{weight}::{info.unit}")
    values = h.get_tensor(f"{weight}::{'values' if encoding == 'full' else 'delta'}")
    scale = h.get_tensor(f"{weight}::scale") if encoding == "int8" else None
    if index.numel() != info.count:
        raise PatchFormatError(f"{path}: {weight} has {index.numel()} indices, manifest says {info.count}.")
    if encoding == "full" and values.dtype != VALUE_DTYPES[info.dtype]:
        raise PatchFormatError(
            f"{path}: {weight}::values has dtype {str(values.dtype).replace('torch.', '')}, "
            f"the manifest records {info.dtype}."
        )
    entry = PatchEntry(
        weight,
        info.unit,
        index,
        values,
        info.transposed,
        info.sft_sha256,
        info.patched_sha256,
        tuple(info.shape),
        encoding,
        scale,
        None if encoding == "full" else VALUE_DTYPES[info.dtype],
    )
    check_entry(entry, f"{path}: ")
    return entry


def apply_entry(stored_sft: torch.Tensor, entry: PatchEntry) -> torch.Tensor:
    """Check shape, dtype and fingerprints on both sides of the splice and a finite result; any failure is
    one user-facing error."""
    check_fits(stored_sft, entry)
    if stored_sft.dtype != entry.model_dtype:
        raise FingerprintMismatch(
            f"{entry.weight} is {str(stored_sft.dtype).replace('torch.', '')} in the model but "
            f"{str(entry.model_dtype).replace('torch.', '')} in the patch: the patch belongs to another model."
        )
    if tensor_sha256(stored_sft) != entry.sft_sha256:
        raise FingerprintMismatch(
            f"{entry.weight} differs from the tensor this patch was made for: the patch belongs to another model "
            "(or the model was changed since)."
        )
    check_entry(entry)  # finite values (the layout was checked with the shape)
    out = splice(stored_sft, entry)
    if not bool(torch.isfinite(out).all()):
        raise ModelFolderError(f"{entry.weight} of the model has NaN or Inf values: refusing to write it patched.")
    if tensor_sha256(out) != entry.patched_sha256:
        raise PatchFormatError(
            f"Patched {entry.weight} does not match the patch's fingerprint: the patch file is damaged."
        )
    return out
