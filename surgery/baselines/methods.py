"""Method specs of the comparison ("hcnr:hessian-hon", "rait-lora:160", "interp:0.5", ...) and how to
run one: produce a model folder from the pair and say what it cost.

Spec grammar: ``KIND[:ARG]`` where ARG is a variant name, a number, or ``key=value`` pairs joined by
commas. Kinds:

- ``base`` / ``sft`` — the pair itself (reference rows, nothing is computed);
- ``hcnr`` — an HCNR patch; ARG is a variant of :mod:`.variants` or PatchOptions fields
  (``hcnr:hessian_data=hon,r_iw=0.25``);
- ``rait-lora`` / ``rait-full`` — RAIT; ARG is a number of examples or ``n=…,s=…,lr=…`` (``s`` = seconds);
- ``dpo`` / ``dpo-full`` — DPO on preference pairs; ARG as for RAIT (``n`` = pairs);
- ``interp`` — ``W0 + α·(W1 − W0)``; ARG is α.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SurgeryError
from ..hcnr.options import PatchOptions
from ..progress import peak_rss_mb
from .variants import variant

log = logging.getLogger(__name__)

KINDS = ("base", "sft", "hcnr", "rait-lora", "rait-full", "dpo", "dpo-full", "interp")
#: which curve of the budget plot a kind belongs to
FAMILY = {"hcnr": "HCNR", "rait-lora": "RAIT-LoRA", "rait-full": "RAIT-full", "dpo": "DPO-LoRA",
          "dpo-full": "DPO-full", "interp": "interpolation", "base": "reference", "sft": "reference"}


@dataclass(frozen=True)
class Method:
    """A parsed spec: ``name`` labels the row, ``params`` are the kind's settings."""

    name: str
    kind: str
    params: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return FAMILY[self.kind]


def _retuned_model_info(res: dict, work: Path, t0: float) -> dict:
    """What the report needs from a re-tuning run (RAIT or DPO): time, memory, the model, its artifact."""
    return dict(method_seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(), model=str(work / "model"),
                model_base=None, examples_used=res["examples_used"], details=res,
                artifact_bytes=res["adapter_bytes"] or res["checkpoint_bytes"],
                artifact="LoRA adapter (fp16)" if res["adapter_bytes"] else "checkpoint")


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SurgeryError(f"{what}: {text!r} is not a number.") from None


def _pairs(arg: str, spec: str) -> dict[str, str]:
    out = {}
    for part in arg.split(","):
        if "=" not in part:
            raise SurgeryError(f"Method {spec!r}: expected key=value, got {part!r}.")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _patch_options(arg: str, spec: str) -> PatchOptions:
    if not arg:
        return PatchOptions()
    if "=" not in arg:
        return variant(arg)
    fields = {f.name: f for f in dataclasses.fields(PatchOptions)}
    changes = {}
    for k, v in _pairs(arg, spec).items():
        k = k.replace("-", "_")
        if k not in fields:
            raise SurgeryError(f"Method {spec!r}: PatchOptions has no field {k!r}.")
        default = fields[k].default
        if isinstance(default, bool):
            changes[k] = v.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            changes[k] = int(_number(v, spec))
        elif isinstance(default, float):
            changes[k] = _number(v, spec)
        else:
            changes[k] = v
    return PatchOptions(**changes)


def _budget(arg: str, spec: str) -> dict:
    if not arg:
        return {}
    if "=" not in arg:
        return {"examples": int(_number(arg, spec))}
    names = {"n": "examples", "examples": "examples", "s": "seconds", "seconds": "seconds", "lr": "lr",
             "r": "r", "beta": "beta", "seed": "seed", "batch_size": "batch_size"}
    out: dict = {}
    for k, v in _pairs(arg, spec).items():
        if k not in names:
            raise SurgeryError(f"Method {spec!r}: unknown setting {k!r}; use n, s, lr, r, beta, seed or batch_size.")
        key = names[k]
        out[key] = int(_number(v, spec)) if key in ("examples", "r", "seed", "batch_size") else _number(v, spec)
    if "seconds" in out and "examples" not in out:
        out["examples"] = None
    return out


def parse_method(spec: str) -> Method:
    """``KIND[:ARG]`` -> :class:`Method` (options validated now, so a typo fails before any work)."""
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise SurgeryError(f"Unknown method {spec!r}; kinds are {', '.join(KINDS)}.")
    if kind in ("base", "sft"):
        if arg:
            raise SurgeryError(f"Method {kind!r} takes no argument.")
        return Method(spec, kind)
    if kind == "hcnr":
        return Method(spec, kind, {"options": _patch_options(arg, spec).to_dict()})
    if kind == "interp":
        alpha = _number(arg, spec) if arg else 0.5
        if not 0.0 <= alpha <= 1.0:
            raise SurgeryError(f"Method {spec!r}: α must be in [0, 1].")
        return Method(spec, kind, {"alpha": alpha})
    params = _budget(arg, spec)
    if kind.startswith("rait"):
        from .rait import RaitOptions

        RaitOptions(mode=kind.split("-")[1], **params)
    else:
        from .dpo import DpoOptions

        DpoOptions(mode="full" if kind == "dpo-full" else "lora", **params)
    return Method(spec, kind, params)


def slug(name: str) -> str:
    """A folder name for a method spec."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@dataclass
class Inputs:
    """The shared inputs every method of one comparison sees."""

    base: str
    sft: str
    hon_data: Path | None = None  # HCNR calibration (D_hon, D_task)
    task_data: Path | None = None
    train_data: Path | None = None  # RAIT pool (prompt/response JSONL)
    pairs_data: Path | None = None  # DPO preference pairs JSONL


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def warm_imports(kind: str) -> None:
    """Import what a method needs before its clock starts, so no method is charged for library imports."""
    import importlib

    import transformers  # noqa: F401

    modules = {"hcnr": ("surgery.hcnr.pipeline", "surgery.apply"), "rait": ("surgery.baselines.rait", "peft"),
               "dpo": ("surgery.baselines.dpo", "peft", "trl", "datasets"), "interp": ("surgery.baselines.interpolate",)}
    for name in modules.get(kind.split("-")[0], ()):
        try:
            importlib.import_module(name)
        except ImportError:  # the method itself reports a missing package in one sentence
            pass
    from transformers import AutoModelForCausalLM  # noqa: F401  (resolves the lazy module)


def run_method(method: Method, inputs: Inputs, work: Path) -> dict:
    """Produce ``method``'s model; returns what it cost and where the model is (``model``, ``model_base``)."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info: dict = {"name": method.name, "kind": method.kind, "family": method.family, "params": method.params}
    if method.kind == "base":
        info.update(model=inputs.base, model_base=None, examples_used=0)
    elif method.kind == "sft":
        info.update(model=inputs.sft, model_base=inputs.base, examples_used=0)
    elif method.kind == "hcnr":
        from ..apply import apply_patch
        from ..hcnr.pipeline import make_patch

        if inputs.hon_data is None or inputs.task_data is None:
            raise SurgeryError("HCNR needs calibration data (--hon-data and --task-data, or a data folder).")

        patch = work / "patch.safetensors"
        report = make_patch(inputs.sft, inputs.base, inputs.hon_data, inputs.task_data, patch,
                            PatchOptions(**method.params["options"]))
        info.update(method_seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
        t1 = time.perf_counter()
        apply_patch(inputs.sft, patch, work / "model", base=inputs.base)
        info.update(apply_seconds=round(time.perf_counter() - t1, 3), model=str(work / "model"), model_base=None,
                    examples_used=sum(report["calibration_examples"].values()),
                    artifact_bytes=report["patch_bytes"], artifact="patch", stage_seconds=report["seconds"],
                    fallbacks=report["fallbacks"], residual_ratio=report["residual_ratio"])
    elif method.kind.startswith("rait"):
        from .rait import RaitOptions, read_examples, run_rait

        if inputs.train_data is None:
            raise SurgeryError("RAIT needs training data (--train-data, or a data folder to build it from).")
        options = RaitOptions(mode=method.kind.split("-")[1], **method.params)
        res = run_rait(inputs.sft, work / "model", read_examples(inputs.train_data), options, base=inputs.base)
        info.update(_retuned_model_info(res, work, t0))
    elif method.kind.startswith("dpo"):
        from .dpo import DpoOptions, run_dpo

        if inputs.pairs_data is None:
            raise SurgeryError("DPO needs preference pairs (built from the RAIT training data).")
        options = DpoOptions(mode="full" if method.kind == "dpo-full" else "lora", **method.params)
        res = run_dpo(inputs.sft, work / "model", _read_jsonl(inputs.pairs_data), options, base=inputs.base)
        info.update(_retuned_model_info(res, work, t0))
    elif method.kind == "interp":
        from .interpolate import interpolate_models

        res = interpolate_models(inputs.base, inputs.sft, method.params["alpha"], work / "model")
        info.update(method_seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(),
                    model=str(work / "model"),
                    model_base=None, examples_used=0, artifact_bytes=res["checkpoint_bytes"], artifact="checkpoint")
    if "method_seconds" in info:
        info["method_seconds"] = round(info["method_seconds"], 3)
        info["peak_rss_mb"] = round(info["peak_rss_mb"], 1)
    info.update(changed_parameters(inputs, info))
    return info


def changed_parameters(inputs: Inputs, info: dict) -> dict:
    """Elements that differ from the SFT model, over the whole model and over block linear weights."""
    from ..linear_layers import is_block_linear_weight
    from ..modelio import locate, open_checkpoint

    if info["kind"] == "sft":
        return {"parameters_changed": 0, "share_of_model": 0.0, "share_of_linear": 0.0}
    sft = open_checkpoint(locate(inputs.sft, inputs.base))
    new = open_checkpoint(locate(info["model"], info.get("model_base")))
    changed = linear_changed = total = linear_total = 0
    for name in sft.keys():
        a = sft.get(name)
        n = a.numel()
        total += n
        diff = n if name not in new else int((new.get(name).to(a.dtype) != a).sum())
        changed += diff
        if a.ndim == 2 and is_block_linear_weight(name):
            linear_total += n
            linear_changed += diff
    return {"parameters_changed": changed, "share_of_model": changed / total if total else None,
            "share_of_linear": linear_changed / linear_total if linear_total else None}
