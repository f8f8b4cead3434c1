"""`surgery check`: pre-flight before paying for a patch — same architecture? where did SFT move?"""

from __future__ import annotations

from dataclasses import dataclass, field

from .architecture import require_same_architecture, require_same_shapes
from .errors import ArchitectureMismatch, SurgeryError
from .linear_layers import block_of, is_block_linear_weight
from .model_folder import nonfinite
from .modelio import ModelSource, open_checkpoint
from .progress import progress


@dataclass
class CheckReport:
    """What `surgery check` found: the pair's architecture and where SFT moved the weights."""

    model_type: str
    tensors: int
    linear_matrices: int
    moved_matrices: int
    share_params_changed: float
    matrix_change: dict[str, float] = field(default_factory=dict)  # ‖Δ‖/‖W0‖ per block linear
    block_change: dict[str, float] = field(default_factory=dict)
    other_changed: list[str] = field(default_factory=list)  # embeddings, norms, lm_head that SFT moved
    nonfinite: list[str] = field(default_factory=list)  # block linears holding NaN/Inf in either model
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as ``--json`` writes it."""
        return self.__dict__.copy()


def check_pair(
    base: ModelSource, sft: ModelSource, *, allow_pickle: bool = False, threshold: float = 0.0
) -> CheckReport:
    """Same architecture, same tensors, and how far SFT moved each block linear (relative Frobenius norm)."""
    model_type = require_same_architecture(base, sft).model_type
    bc = open_checkpoint(base, allow_pickle=allow_pickle)
    sc = open_checkpoint(sft, allow_pickle=allow_pickle)
    bk, sk = set(bc.keys()), set(sc.keys())
    only_sft, only_base = sorted(sk - bk), sorted(bk - sk)
    warnings = []
    # a tied lm_head may be stored in one checkpoint and not the other
    for name in only_sft + only_base:
        if "lm_head" not in name:
            raise ArchitectureMismatch(f"Base and SFT checkpoints differ: tensor {name} is only in one of them.")
        warnings.append(f"{name} is stored in only one checkpoint (tied embeddings); ignored.")
    changed = total = 0
    matrix_change: dict[str, float] = {}
    block_num: dict[str, float] = {}
    block_den: dict[str, float] = {}
    other: list[str] = []
    broken: list[str] = []
    require_same_shapes(sorted(bk & sk), bc, sc)
    for name in progress(sorted(bk & sk), desc="check", unit="tensor"):
        w0, w1 = bc.get(name), sc.get(name)
        d = w1.double() - w0.double()
        changed += int((d != 0).sum())
        total += d.numel()
        num, den = float((d**2).sum()), float((w0.double() ** 2).sum())
        if w0.ndim == 2 and is_block_linear_weight(name) and (nonfinite(w0) or nonfinite(w1)):
            broken.append(name)  # NaN/Inf: neither "moved" nor "unmoved", and patch/apply refuse it
            warnings.append(f"{name} holds NaN or Inf values; patch and apply will refuse this model.")
        elif w0.ndim == 2 and is_block_linear_weight(name):
            matrix_change[name] = (num**0.5) / (den**0.5) if den else 0.0
            blk = block_of(name)
            block_num[blk] = block_num.get(blk, 0.0) + num
            block_den[blk] = block_den.get(blk, 0.0) + den
        elif num > 0:
            other.append(name)
    if not matrix_change and not broken:
        raise SurgeryError("No linear weights inside numbered transformer blocks were found in the checkpoints.")
    moved = sum(1 for v in matrix_change.values() if v > threshold)
    if moved == 0:
        warnings.append("SFT did not change any linear weight: there is nothing to restore.")
    if other:
        warnings.append(f"SFT also changed {len(other)} tensors HCNR never touches (embeddings, norms, lm_head).")
    blocks = {b: (block_num[b] ** 0.5) / (block_den[b] ** 0.5) if block_den[b] else 0.0 for b in block_num}
    return CheckReport(
        model_type,
        len(bk & sk),
        len(matrix_change) + len(broken),
        moved,
        changed / max(1, total),
        matrix_change,
        blocks,
        other,
        broken,
        warnings,
    )
