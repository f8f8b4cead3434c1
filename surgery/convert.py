"""`surgery convert`: re-encode a patch (full, bf16, int8) or export it as a PEFT LoRA adapter.

Re-encoding goes through the patched weights: each source entry is applied to its SFT tensor (every
fingerprint checked, :func:`surgery.patchfile.apply_entry`), its new neuron values are taken from the result
and stored in the target encoding (:mod:`surgery.patch_encoding`), and the target entry's ``patched_sha256``
is the fingerprint of *its own* decoded result. So a converted patch is checked on apply like any other, and
the report says how far its weights are from the source patch's (max and mean absolute error on the
changed neurons). Forming a delta needs the SFT weights, so every conversion but a copy to the same
encoding (or a PEFT export of an already encoded patch, which holds its delta) needs them.

The PEFT export writes the restored neurons as a LoRA of the SFT weights: for column neurons
``ΔW = B·A`` with ``A`` one-hot (k x in: row j selects input column ``index[j]``) and ``B = new − SFT`` on those
columns (out x k); for row neurons ``A`` holds the row deltas and ``B`` is one-hot. The rank of each matrix
is its neuron count k (``rank_pattern``, with ``alpha_pattern`` = rank so that PEFT's scale alpha/r is 1),
so merging the adapter into the SFT model gives :func:`surgery.apply.apply_patch`'s weights up to float
rounding, and the adapter stacks on a user's own (SFT) adapter as one more LoRA.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_file

from .atomic import atomic_folder
from .errors import ArchitectureMismatch, OptionError
from .modelio import tensor_sha256
from .patch_encoding import ENCODINGS, compute_dtype, delta_of, encode_delta, neurons
from .patchfile import PatchEntry, PatchManifest, apply_entry, read_patch, splice, write_patch

log = logging.getLogger(__name__)

#: what ``surgery convert --to`` accepts
TARGETS = (*ENCODINGS, "peft")
#: the file beside a PEFT export that records where it came from and the rank per matrix
PEFT_RECORD = "surgery_peft.json"


class TensorSource(Protocol):
    """Tensor-by-tensor access to the SFT weights (a :func:`surgery.modelio.open_checkpoint` result)."""

    def __contains__(self, name: str) -> bool: ...

    def get(self, name: str) -> torch.Tensor: ...


@dataclass
class ConvertReport:
    """What a conversion wrote and how far its weights are from the source patch's."""

    source: str
    output: str
    source_encoding: str
    to: str
    bytes_in: int
    bytes_out: int
    tensors: int
    max_abs_error: float | None = None  # over every changed neuron entry; None where not measured (no SFT)
    mean_abs_error: float | None = None
    mean_abs_change: float | None = None  # mean |new − SFT| on the same entries, for scale
    ranks: dict[str, int] = field(default_factory=dict)  # peft only: module -> rank

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Errors:
    """Running max / sum of |converted − source| and of |source − SFT| over the changed neuron entries."""

    max_err: float = 0.0
    sum_err: float = 0.0
    sum_change: float = 0.0
    count: int = 0

    def add(self, got: torch.Tensor, want: torch.Tensor, sft: torch.Tensor) -> None:
        work = compute_dtype(want.dtype)
        err = (got.to(work) - want.to(work)).abs()
        self.max_err = max(self.max_err, float(err.max()))
        self.sum_err += float(err.sum(dtype=torch.float64))
        self.sum_change += float((want.to(work) - sft.to(work)).abs().sum(dtype=torch.float64))
        self.count += err.numel()


def _sft_tensor(sft: TensorSource, entry: PatchEntry) -> torch.Tensor:
    if entry.weight not in sft:
        raise ArchitectureMismatch(f"The SFT model has no tensor {entry.weight}: this patch is for another model.")
    return sft.get(entry.weight)


def _canon(t: torch.Tensor, entry: PatchEntry) -> torch.Tensor:
    return t.t() if entry.transposed else t


def reencode_entry(
    entry: PatchEntry, stored_sft: torch.Tensor, encoding: str
) -> tuple[PatchEntry, torch.Tensor, torch.Tensor]:
    """``entry`` in ``encoding``, the new entry's patched tensor and the source's new neuron values; the source
    is checked against the SFT tensor on the way (fingerprints before and after, :func:`apply_entry`)."""
    source_patched = apply_entry(stored_sft, entry)
    new = neurons(_canon(source_patched, entry), entry.index, entry.unit).contiguous()
    if encoding == "full":
        out = dataclasses.replace(entry, values=new, encoding="full", scale=None, dtype=None)
        return out, source_patched, new
    work = compute_dtype(stored_sft.dtype)
    delta = new.to(work) - neurons(_canon(stored_sft, entry), entry.index, entry.unit).to(work)
    stored, scale = encode_delta(delta, entry.unit, encoding)
    out = dataclasses.replace(
        entry, values=stored, encoding=encoding, scale=scale, dtype=stored_sft.dtype, patched_sha256=""
    )
    patched = splice(stored_sft, out)
    out.patched_sha256 = tensor_sha256(patched)
    return out, patched, new


def convert_patch(patch: str | Path, out: str | Path, to: str, *, sft: TensorSource | None = None) -> ConvertReport:
    """Write ``patch`` re-encoded as ``to`` (``full``/``bf16``/``int8``: a patch file; ``peft``: an adapter
    folder). ``sft`` is the SFT model's tensors; see the module docstring for when it is needed."""
    if to not in TARGETS:
        raise OptionError(f"--to must be one of {', '.join(TARGETS)}, not {to!r}.")
    manifest, entries = read_patch(patch)
    report = ConvertReport(str(patch), str(out), manifest.encoding, to, Path(patch).stat().st_size, 0, len(entries))
    if to == "peft":
        report.ranks = export_peft(manifest, entries, Path(out), sft, report)
        report.bytes_out = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
        return report
    if sft is None:
        if to != manifest.encoding:
            raise OptionError(
                f"Converting a {manifest.encoding} patch to {to} needs the SFT model's weights (the change is "
                "formed against them and the result fingerprinted): pass --sft."
            )
        converted = entries
    else:
        converted, errors = [], _Errors()
        for entry in entries:
            t = _sft_tensor(sft, entry)
            new_entry, patched, source = reencode_entry(entry, t, to)
            got = neurons(_canon(patched, entry), entry.index, entry.unit)
            errors.add(got, source, neurons(_canon(t, entry), entry.index, entry.unit))
            converted.append(new_entry)
        _fill_errors(report, errors)
    write_patch(out, converted, dataclasses.replace(manifest, encoding=to))
    report.bytes_out = Path(out).stat().st_size
    log.info("wrote %s (%s, %d bytes)", out, to, report.bytes_out)
    return report


def _fill_errors(report: ConvertReport, errors: _Errors) -> None:
    if errors.count:
        report.max_abs_error = errors.max_err
        report.mean_abs_error = errors.sum_err / errors.count
        report.mean_abs_change = errors.sum_change / errors.count


def peft_delta(entry: PatchEntry, sft: TensorSource | None) -> torch.Tensor:
    """``new − SFT`` on the entry's neurons in float32 (float64 for a float64 model), canonical orientation.

    From the SFT tensor when given (the source checked against it); an encoded patch holds it already."""
    if sft is not None:
        t = _sft_tensor(sft, entry)
        work = compute_dtype(t.dtype)
        patched = apply_entry(t, entry)
        new = neurons(_canon(patched, entry), entry.index, entry.unit).to(work)
        return new - neurons(_canon(t, entry), entry.index, entry.unit).to(work)
    if entry.encoding == "full":
        raise OptionError(
            "A full patch stores new values, not the change: exporting it as a PEFT adapter needs the SFT "
            "model's weights (pass --sft)."
        )
    return delta_of(entry.values, entry.scale, entry.unit, compute_dtype(entry.model_dtype))


def lora_factors(entry: PatchEntry, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``B @ A`` = the entry's change of the canonical (out x in) matrix, rank = neuron count."""
    out_dim, in_dim = (entry.shape[1], entry.shape[0]) if entry.transposed else entry.shape
    k = int(entry.index.numel())
    one_hot = torch.zeros(k, in_dim if entry.unit == "cols" else out_dim, dtype=delta.dtype)
    one_hot[torch.arange(k), entry.index.long()] = 1
    if entry.unit == "cols":
        return one_hot, delta.contiguous()  # A (k x in) selects the columns, B (out x k) = their change
    return delta.contiguous(), one_hot.t().contiguous()  # A (k x in) = the rows' change, B (out x k) places them


def module_of(weight: str) -> str:
    """The module a weight belongs to (``model.layers.0.mlp.down_proj.weight`` -> ``...down_proj``)."""
    if not weight.endswith(".weight"):
        raise OptionError(f"{weight} is not a module's .weight: it cannot be expressed as a PEFT LoRA.")
    return weight[: -len(".weight")]


def adapter_config(manifest: PatchManifest, ranks: dict[str, int], fan_in_fan_out: bool) -> dict[str, Any]:
    """A PEFT ``adapter_config.json`` for the given per-module ranks (scale alpha/r = 1 for each)."""
    top = max(ranks.values())
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": manifest.sft,
        "r": top,
        "lora_alpha": top,
        "rank_pattern": dict(ranks),
        "alpha_pattern": dict(ranks),
        "target_modules": sorted(ranks),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "revision": None,
    }


def export_peft(
    manifest: PatchManifest,
    entries: list[PatchEntry],
    out: Path,
    sft: TensorSource | None,
    report: ConvertReport | None = None,
) -> dict[str, int]:
    """Write ``out/`` = ``adapter_config.json`` + ``adapter_model.safetensors`` (+ :data:`PEFT_RECORD`);
    returns the rank per module. Atomic: ``out`` is complete or absent."""
    transposed = {e.transposed for e in entries}
    if len(transposed) > 1:
        raise OptionError("The patch mixes transposed (Conv1D) and plain matrices; one PEFT adapter cannot hold both.")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for entry in entries:
        module = module_of(entry.weight)
        a, b = lora_factors(entry, peft_delta(entry, sft).to(torch.float32))
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
        ranks[module] = int(entry.index.numel())
    config = adapter_config(manifest, ranks, fan_in_fan_out=transposed == {True})
    record = {
        "patch": report.source if report else None,
        "encoding": manifest.encoding,
        "sft": manifest.sft,
        "base": manifest.base,
        "fingerprints_checked": sft is not None,
        "ranks": ranks,
        "note": "B @ A = (patched - SFT) on the restored neurons; alpha = r, so merging it into the SFT model "
        "gives the patched weights up to float rounding.",
    }
    with atomic_folder(out) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / PEFT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    low, high = min(ranks.values()), max(ranks.values())
    log.info("wrote PEFT adapter %s: %d modules, rank %d..%d", out, len(ranks), low, high)
    return ranks
