"""Honesty-aware quantization: the patch's restored input columns are scaled up before quantizing.

A patch knows which input columns of which linear layers carry honesty (the columns it restored); no
quantizer does. Activation-aware scaling (AWQ) protects such "salient" input channels: multiply the
weight's columns by ``s`` and divide the activation feeding them by ``s``, so the product is unchanged
in exact arithmetic while the quantization error of those columns shrinks relative to their size. The
division is folded into the operation that produces the activation, so the float model computes the
same function and no operator is added:

- q/k/v (and gate/up) read the output of the layer's input (post-attention / pre-feed-forward) norm:
  the norm's weight is divided on those channels; the columns of all layers that share the norm are
  scaled together (the union of their restored columns);
- o_proj reads the attention output, whose channel ``j`` is a row of v_proj (repeated over the query
  heads of a grouped-query layer): those v_proj rows (and bias) are divided, and every o_proj column fed
  by them is scaled;
- down_proj reads ``act(gate) * up``, linear in up_proj's rows: those rows (and bias) are divided.

With ``s`` a power of two both operations are exact in floating point, so the fp32 export of the
scaled model matches PyTorch as tightly as the unscaled one (the strict fp32 verification still runs).
Layers this module does not know how to fold (fused qkv/gate-up projections, GPT-2's Conv1D, a missing
norm) are left as they are and listed in the record.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SurgeryError
from ..modelio import copy_side_files, load_model, load_tokenizer, locate
from ..patchfile import read_patch

log = logging.getLogger(__name__)

#: layer-name pattern of a decoder block's projection: (block prefix, sub-module, projection)
_PROJ = re.compile(r"^(?P<block>.+)\.(?P<sub>self_attn|mlp)\.(?P<proj>[a-z_]+)\.weight$")
ATTN_INPUT = ("q_proj", "k_proj", "v_proj")
MLP_INPUT = ("gate_proj", "up_proj")
#: the norm that feeds a block's MLP, in order of preference (Gemma 2/3 have a pre-feed-forward norm)
MLP_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm")


@dataclass
class ProtectRecord:
    """What was scaled (for export.json): counts per kind and the weights that could not be folded."""

    scale: float
    patch: str
    columns: int = 0
    matrices: int = 0
    groups: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "method": "activation-aware scaling of the patch's restored input columns, folded into the previous op",
            "patch": self.patch,
            "scale": self.scale,
            "columns_scaled": self.columns,
            "matrices_scaled": self.matrices,
            "groups": self.groups,
            "not_folded": self.skipped,
        }


def restored_columns(patch: str | Path) -> dict[str, torch.Tensor]:
    """weight name -> sorted input-column indices the patch restored (row-unit entries have none)."""
    _, entries = read_patch(patch)
    cols = {e.weight: e.index.long() for e in entries if e.unit == "cols"}
    if not cols:
        raise SurgeryError(f"The patch {patch} restores no input columns: there is nothing to protect.")
    return cols


def _union(indices: Iterable[torch.Tensor | None]) -> torch.Tensor:
    parts = [i for i in indices if i is not None and i.numel()]
    return torch.unique(torch.cat(parts)) if parts else torch.zeros(0, dtype=torch.long)


def _norm_offset(norm: torch.nn.Module) -> float:
    """1 for Gemma-style norms that multiply by ``1 + weight``, 0 for the usual ``weight``."""
    return 1.0 if "gemma" in type(norm).__name__.lower() else 0.0


def _divide_norm(norm: torch.nn.Module, channels: torch.Tensor, s: float) -> None:
    w: torch.Tensor = norm.weight  # type: ignore[assignment]  # checked by the caller
    off = _norm_offset(norm)
    w.data[channels] = (w.data[channels] + off) / s - off


def _linear(module: torch.nn.Module, name: str) -> torch.nn.Linear | None:
    m = getattr(module, name, None)
    return m if isinstance(m, torch.nn.Linear) else None


def _head_layout(attn: torch.nn.Module, o_in: int, v_out: int) -> tuple[int, int]:
    """(head_dim, query heads per kv head) of an attention module, from its config or its shapes."""
    cfg = getattr(attn, "config", None)
    head_dim = getattr(attn, "head_dim", None) or getattr(cfg, "head_dim", None)
    n_heads = getattr(cfg, "num_attention_heads", None)
    if not head_dim and n_heads:
        head_dim = o_in // n_heads
    if not head_dim or o_in % head_dim or v_out % head_dim or (o_in // head_dim) % (v_out // head_dim):
        raise SurgeryError("cannot tell the attention's head layout")
    return int(head_dim), (o_in // head_dim) // (v_out // head_dim)


def _scale_attention_output(attn: torch.nn.Module, cols: torch.Tensor, s: float) -> int:
    """Divide the v_proj rows feeding o_proj's ``cols`` and scale every o_proj column they feed."""
    v, o = _linear(attn, "v_proj"), _linear(attn, "o_proj")
    if v is None or o is None:
        raise SurgeryError("no separate v_proj/o_proj")
    head_dim, groups = _head_layout(attn, o.in_features, v.out_features)
    # o_proj input channel j = query head h = j // head_dim, position p = j % head_dim; it reads kv head h // groups
    j = torch.arange(o.in_features)
    source_row = (j // head_dim // groups) * head_dim + j % head_dim
    rows = torch.unique(source_row[cols])
    fed = torch.isin(source_row, rows).nonzero().flatten()
    v.weight.data[rows] /= s
    if v.bias is not None:
        v.bias.data[rows] /= s
    o.weight.data[:, fed] *= s
    return int(fed.numel())


def _scale_mlp_output(mlp: torch.nn.Module, cols: torch.Tensor, s: float) -> int:
    """Divide up_proj's rows ``cols`` (down_proj's input is linear in them) and scale down_proj's columns."""
    up, down = _linear(mlp, "up_proj"), _linear(mlp, "down_proj")
    if up is None or down is None:
        raise SurgeryError("no separate up_proj/down_proj")
    up.weight.data[cols] /= s
    if up.bias is not None:
        up.bias.data[cols] /= s
    down.weight.data[:, cols] *= s
    return int(cols.numel())


def _scale_after_norm(
    norm: torch.nn.Module | None, linears: list[torch.nn.Linear], cols: torch.Tensor, s: float
) -> int:
    """Divide the norm's weight on ``cols`` and scale those columns of every linear that reads it."""
    if norm is None or getattr(norm, "weight", None) is None:
        raise SurgeryError("no norm with a weight feeds these projections")
    _divide_norm(norm, cols, s)
    for lin in linears:
        lin.weight.data[:, cols] *= s
    return int(cols.numel()) * len(linears)


def _check_fits(model: torch.nn.Module, columns: dict[str, torch.Tensor], patch: str) -> None:
    """Every restored weight exists in the model and every index is one of its input columns."""
    params = dict(model.named_parameters())
    for weight, idx in columns.items():
        p = params.get(weight)
        if p is None or p.dim() != 2 or (idx.numel() and int(idx.max()) >= p.shape[1]):
            raise SurgeryError(f"The patch {patch} does not fit this model ({weight} is missing or smaller).")


def protect_folder(
    model_dir: Path, out: Path, columns: dict[str, torch.Tensor], scale: float, patch: str, *, trust_remote_code: bool
) -> ProtectRecord:
    """``model_dir`` with the restored columns scaled (:func:`fold_protection`), saved as a model folder ``out``."""
    source = locate(str(model_dir))
    model = load_model(source, dtype=torch.float32, trust_remote_code=trust_remote_code)
    record = fold_protection(model, columns, scale, patch)
    model.save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(source, trust_remote_code=trust_remote_code).save_pretrained(str(out))
    copy_side_files([Path(model_dir)], out)
    return record


def fold_protection(
    model: torch.nn.Module, columns: dict[str, torch.Tensor], scale: float, patch: str
) -> ProtectRecord:
    """Scale the restored ``columns`` of ``model`` by ``scale`` in place, folded into the previous op."""
    record = ProtectRecord(scale=scale, patch=patch)
    _check_fits(model, columns, patch)
    modules = dict(model.named_modules())
    by_block: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for weight, idx in columns.items():
        m = _PROJ.match(weight)
        if m is None:
            record.skipped.append(weight)
            continue
        by_block.setdefault((m["block"], m["sub"]), {})[m["proj"]] = idx
    for (block_name, sub_name), procs in sorted(by_block.items()):
        block, sub = modules.get(block_name), modules.get(f"{block_name}.{sub_name}")
        if block is None or sub is None:
            record.skipped += [f"{block_name}.{sub_name}.{p}.weight" for p in procs]
            continue
        if sub_name == "self_attn":
            plan = [
                ("attention input", ATTN_INPUT, getattr(block, "input_layernorm", None)),
                ("o_proj", ("o_proj",), None),
            ]
        else:
            norm = next((getattr(block, n) for n in MLP_NORMS if getattr(block, n, None) is not None), None)
            plan = [("mlp input", MLP_INPUT, norm), ("down_proj", ("down_proj",), None)]
        for kind, names, norm in plan:
            cols = _union(procs.get(n) for n in names)
            if not cols.numel():
                continue
            try:
                if kind == "o_proj":
                    n = _scale_attention_output(sub, cols, scale)
                elif kind == "down_proj":
                    n = _scale_mlp_output(sub, cols, scale)
                else:
                    linears = [lin for lin in (_linear(sub, p) for p in names) if lin is not None]
                    if len(linears) != len(names):
                        raise SurgeryError("fused projections")
                    n = _scale_after_norm(norm, linears, cols, scale)
            except SurgeryError as exc:
                log.warning("protect: %s.%s %s not folded (%s)", block_name, sub_name, kind, exc)
                record.skipped += [f"{block_name}.{sub_name}.{p}.weight" for p in names if p in procs]
                continue
            record.columns += n
            record.matrices += len(names)
            record.groups[kind] = record.groups.get(kind, 0) + 1
    log.info("protect: %d columns of %d matrices scaled by %g", record.columns, record.matrices, scale)
    if not record.matrices:
        raise SurgeryError(
            f"None of the patch's {len(columns)} restored layers could be protected in this model "
            "(no q/k/v, o_proj, gate/up or down_proj layer with a foldable previous operation)."
        )
    return record
