"""`surgery check`: pre-flight before paying for a patch — same architecture? where did SFT move?"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


from .errors import SurgeryError
from .linear_layers import block_of, is_block_linear_weight
from .modelio import ModelSource, open_checkpoint
from .progress import progress

#: config fields that must agree for a patch to make sense
ARCH_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "vocab_size", "n_embd", "n_layer", "n_head")


@dataclass
class CheckReport:
    model_type: str
    tensors: int
    linear_matrices: int
    moved_matrices: int
    share_params_changed: float
    matrix_change: dict[str, float] = field(default_factory=dict)  # ‖Δ‖/‖W0‖ per block linear
    block_change: dict[str, float] = field(default_factory=dict)
    other_changed: list[str] = field(default_factory=list)  # embeddings, norms, lm_head that SFT moved
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _config(src: ModelSource) -> dict:
    path = src.config_dir / "config.json"
    cfg = json.loads(path.read_text())
    text = cfg.get("text_config") or {}
    return {**text, **{k: v for k, v in cfg.items() if k != "text_config"}}


def compare_architectures(base: ModelSource, sft: ModelSource) -> str:
    a, b = _config(base), _config(sft)
    for key in ARCH_FIELDS:
        if key in a or key in b:
            if a.get(key) != b.get(key):
                raise SurgeryError(
                    f"Base and SFT are not the same architecture: {key} is {a.get(key)!r} in the base "
                    f"and {b.get(key)!r} in the SFT model."
                )
    return str(b.get("model_type", "unknown"))


def check_pair(base: ModelSource, sft: ModelSource, *, allow_pickle: bool = False, threshold: float = 0.0) -> CheckReport:
    model_type = compare_architectures(base, sft)
    bc = open_checkpoint(base, allow_pickle=allow_pickle)
    sc = open_checkpoint(sft, allow_pickle=allow_pickle)
    bk, sk = set(bc.keys()), set(sc.keys())
    only_sft, only_base = sorted(sk - bk), sorted(bk - sk)
    warnings = []
    # a tied lm_head may be stored in one checkpoint and not the other
    for name in only_sft + only_base:
        if "lm_head" not in name:
            raise SurgeryError(f"Base and SFT checkpoints differ: tensor {name} is only in one of them.")
        warnings.append(f"{name} is stored in only one checkpoint (tied embeddings); ignored.")
    changed = total = 0
    matrix_change: dict[str, float] = {}
    block_num: dict[str, float] = {}
    block_den: dict[str, float] = {}
    other: list[str] = []
    for name in progress(sorted(bk & sk), desc="check", unit="tensor"):
        w0, w1 = bc.get(name), sc.get(name)
        if tuple(w0.shape) != tuple(w1.shape):
            raise SurgeryError(f"{name} has shape {tuple(w0.shape)} in the base and {tuple(w1.shape)} in the SFT.")
        d = w1.double() - w0.double()
        changed += int((d != 0).sum())
        total += d.numel()
        num, den = float((d**2).sum()), float((w0.double() ** 2).sum())
        if w0.ndim == 2 and is_block_linear_weight(name):
            matrix_change[name] = (num**0.5) / (den**0.5) if den else 0.0
            blk = block_of(name)
            block_num[blk] = block_num.get(blk, 0.0) + num
            block_den[blk] = block_den.get(blk, 0.0) + den
        elif num > 0:
            other.append(name)
    if not matrix_change:
        raise SurgeryError("No linear weights inside numbered transformer blocks were found in the checkpoints.")
    moved = sum(1 for v in matrix_change.values() if v > threshold)
    if moved == 0:
        warnings.append("SFT did not change any linear weight: there is nothing to restore.")
    if other:
        warnings.append(f"SFT also changed {len(other)} tensors HCNR never touches (embeddings, norms, lm_head).")
    blocks = {b: (block_num[b] ** 0.5) / (block_den[b] ** 0.5) if block_den[b] else 0.0 for b in block_num}
    return CheckReport(model_type, len(bk & sk), len(matrix_change), moved, changed / max(1, total),
                       matrix_change, blocks, other, warnings)
