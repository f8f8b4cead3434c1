"""Method specs of the comparison ("hcnr:hessian-hon", "rait-lora:160", "interp:0.5", ...) and how to
run one: produce a model folder from the pair and say what it cost.

Spec grammar: ``KIND[:ARG]`` where ARG is a variant name, a number, or ``key=value`` pairs joined by
commas. Kinds (each a parse and a run function in :data:`REGISTRY`):

- ``base`` / ``sft`` — the pair itself (reference rows, nothing is computed);
- ``hcnr`` — an HCNR patch; ARG is a variant of :mod:`.variants` or PatchOptions fields
  (``hcnr:hessian_data=hon,r_iw=0.25``);
- ``rait-lora`` / ``rait-full`` — RAIT; ARG is a number of examples or ``n=…,s=…,lr=…`` (``s`` = seconds);
- ``dpo`` / ``dpo-full`` — DPO on preference pairs; ARG as for RAIT (``n`` = pairs);
- ``interp`` — ``W0 + α·(W1 − W0)``; ARG is α.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..apply import apply_patch
from ..devices import Placement
from ..errors import CalibrationDataError, OptionError, SurgeryError
from ..hcnr.options import ComputeOptions, PatchOptions
from ..hcnr.pipeline import make_patch
from ..jsonl import read_jsonl
from ..linear_layers import is_block_linear_weight
from ..modelio import locate, open_checkpoint
from ..progress import peak_rss_mb
from .dpo import DpoOptions, run_dpo
from .interpolate import interpolate_models
from .options import TrainOptions
from .rait import RaitOptions, read_examples, run_rait
from .variants import variant


@dataclass(frozen=True)
class Method:
    """A parsed spec: ``name`` labels the row, ``params`` are the kind's settings."""

    name: str
    kind: str
    params: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        """Which curve of the budget plot the method belongs to."""
        return REGISTRY[self.kind].family


@dataclass
class Inputs:
    """The shared inputs every method of one comparison sees."""

    base: str
    sft: str
    hon_data: Path | None = None  # HCNR calibration (D_hon, D_task)
    task_data: Path | None = None
    train_data: Path | None = None  # RAIT pool (prompt/response JSONL)
    pairs_data: Path | None = None  # DPO preference pairs JSONL


# --- parsing: one function per kind, (kind, arg, spec) -> params ------------------------------------


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


#: short spec key -> options field, in the order error messages list them (``examples``/``seconds`` also accepted)
_BUDGET_KEYS = {
    "n": "examples",
    "s": "seconds",
    "lr": "lr",
    "r": "r",
    "beta": "beta",
    "seed": "seed",
    "batch_size": "batch_size",
}
_INTEGER_FIELDS = ("examples", "r", "seed", "batch_size")


def _budget(arg: str, spec: str, options_class: type[TrainOptions]) -> dict:
    """``N`` or ``key=value,...`` -> fields of ``options_class``; a key it lacks names the valid ones."""
    if not arg:
        return {}
    if "=" not in arg:
        return {"examples": int(_number(arg, spec))}
    fields = {f.name for f in dataclasses.fields(options_class)}
    short = {k: v for k, v in _BUDGET_KEYS.items() if v in fields}
    names = {**short, **{v: v for v in short.values()}}
    out: dict = {}
    for k, v in _pairs(arg, spec).items():
        if k not in names:
            valid = list(short)
            raise OptionError(f"Method {spec!r}: unknown setting {k!r}; use {', '.join(valid[:-1])} or {valid[-1]}.")
        key = names[k]
        out[key] = int(_number(v, spec)) if key in _INTEGER_FIELDS else _number(v, spec)
    if "seconds" in out and "examples" not in out:
        out["examples"] = None
    return out


def _mode(kind: str) -> str:
    return "full" if kind.endswith("-full") else "lora"


def _parse_reference(kind: str, arg: str, spec: str) -> dict:
    if arg:
        raise SurgeryError(f"Method {kind!r} takes no argument.")
    return {}


def _parse_hcnr(kind: str, arg: str, spec: str) -> dict:
    return {"options": _patch_options(arg, spec).to_dict()}


def _parse_interp(kind: str, arg: str, spec: str) -> dict:
    alpha = _number(arg, spec) if arg else 0.5
    if not 0.0 <= alpha <= 1.0:
        raise SurgeryError(f"Method {spec!r}: α must be in [0, 1].")
    return {"alpha": alpha}


def _parse_rait(kind: str, arg: str, spec: str) -> dict:
    params = _budget(arg, spec, RaitOptions)
    RaitOptions(mode=_mode(kind), **params)  # validated now, so a bad budget fails before any work
    return params


def _parse_dpo(kind: str, arg: str, spec: str) -> dict:
    params = _budget(arg, spec, DpoOptions)
    DpoOptions(mode=_mode(kind), **params)
    return params


# --- running: one function per kind, (method, inputs, work, t0, placement) -> what it cost and where its model is
# (``placement``: the device and precision of training; None is the CPU in float32)


def _retuned_model_info(res: dict, work: Path, t0: float) -> dict:
    """What the report needs from a re-tuning run (RAIT or DPO): time, memory, the model, its artifact."""
    return {
        "method_seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "model": str(work / "model"),
        "model_base": None,
        "examples_used": res["examples_used"],
        "details": res,
        "artifact_bytes": res["adapter_bytes"] or res["checkpoint_bytes"],
        "artifact": "LoRA adapter (fp16)" if res["adapter_bytes"] else "checkpoint",
    }


def _run_base(method: Method, inputs: Inputs, work: Path, t0: float, placement: Placement | None = None) -> dict:
    return {"model": inputs.base, "model_base": None, "examples_used": 0}


def _run_sft(method: Method, inputs: Inputs, work: Path, t0: float, placement: Placement | None = None) -> dict:
    return {"model": inputs.sft, "model_base": inputs.base, "examples_used": 0}


def _run_hcnr(method: Method, inputs: Inputs, work: Path, t0: float, placement: Placement | None = None) -> dict:
    if inputs.hon_data is None or inputs.task_data is None:
        raise SurgeryError("HCNR needs calibration data (--honesty-data and --task-data, or a data folder).")
    patch = work / "patch.safetensors"
    options = PatchOptions(**method.params["options"])
    compute = ComputeOptions(str(placement.device), placement.dtype_name) if placement is not None else ComputeOptions()
    report = make_patch(inputs.sft, inputs.base, inputs.hon_data, inputs.task_data, patch, options, compute=compute)
    info = {"method_seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}
    t1 = time.perf_counter()
    apply_patch(inputs.sft, patch, work / "model", base=inputs.base)
    info.update(
        apply_seconds=round(time.perf_counter() - t1, 3),
        model=str(work / "model"),
        model_base=None,
        examples_used=sum(report.calibration_examples.values()),
        artifact_bytes=report.patch_bytes,
        artifact="patch",
        stage_seconds=report.seconds,
        fallbacks=report.fallbacks,
        residual_ratio=report.residual_ratio,
    )
    return info


def _run_rait(method: Method, inputs: Inputs, work: Path, t0: float, placement: Placement | None = None) -> dict:
    if inputs.train_data is None:
        raise SurgeryError("RAIT needs training data (--train-data, or a data folder to build it from).")
    options = RaitOptions(mode=_mode(method.kind), **method.params)
    examples = read_examples(inputs.train_data)
    res = run_rait(inputs.sft, work / "model", examples, options, base=inputs.base, placement=placement)
    return _retuned_model_info(res, work, t0)


def _run_dpo(method: Method, inputs: Inputs, work: Path, t0: float, placement: Placement | None = None) -> dict:
    if inputs.pairs_data is None:
        raise SurgeryError("DPO needs preference pairs (built from the RAIT training data).")
    options = DpoOptions(mode=_mode(method.kind), **method.params)
    pairs = read_jsonl(inputs.pairs_data, what="DPO preference pairs file", error=CalibrationDataError)
    res = run_dpo(inputs.sft, work / "model", pairs, options, base=inputs.base, placement=placement)
    return _retuned_model_info(res, work, t0)


def _run_interp(method: Method, inputs: Inputs, work: Path, t0: float, placement: Placement | None = None) -> dict:
    res = interpolate_models(inputs.base, inputs.sft, method.params["alpha"], work / "model")
    return {
        "method_seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "model": str(work / "model"),
        "model_base": None,
        "examples_used": 0,
        "artifact_bytes": res["checkpoint_bytes"],
        "artifact": "checkpoint",
    }


@dataclass(frozen=True)
class MethodKind:
    """One kind of method: its curve in the budget plot, how its ARG parses, how it makes its model."""

    family: str
    parse: Callable[[str, str, str], dict]
    run: Callable[[Method, Inputs, Path, float, Placement | None], dict]
    #: third-party modules imported before the clock starts (so no method is charged for them)
    imports: tuple[str, ...] = ()


REGISTRY: dict[str, MethodKind] = {
    "base": MethodKind("reference", _parse_reference, _run_base),
    "sft": MethodKind("reference", _parse_reference, _run_sft),
    "hcnr": MethodKind("HCNR", _parse_hcnr, _run_hcnr),
    "rait-lora": MethodKind("RAIT-LoRA", _parse_rait, _run_rait, ("peft",)),
    "rait-full": MethodKind("RAIT-full", _parse_rait, _run_rait, ("peft",)),
    "dpo": MethodKind("DPO-LoRA", _parse_dpo, _run_dpo, ("peft", "trl", "datasets")),
    "dpo-full": MethodKind("DPO-full", _parse_dpo, _run_dpo, ("peft", "trl", "datasets")),
    "interp": MethodKind("interpolation", _parse_interp, _run_interp),
}
KINDS = tuple(REGISTRY)


def parse_method(spec: str) -> Method:
    """``KIND[:ARG]`` -> :class:`Method` (options validated now, so a typo fails before any work)."""
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    if kind not in REGISTRY:
        raise SurgeryError(f"Unknown method {spec!r}; kinds are {', '.join(KINDS)}.")
    return Method(spec, kind, REGISTRY[kind].parse(kind, arg, spec))


def slug(name: str) -> str:
    """A folder name for a method spec."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def warm_imports(kind: str) -> None:
    """Import what a method needs before its clock starts, so no method is charged for library imports."""
    transformers = importlib.import_module("transformers")
    for name in REGISTRY[kind].imports if kind in REGISTRY else ():
        try:
            importlib.import_module(name)
        except ImportError:  # the method itself reports a missing package in one sentence
            pass
    _ = transformers.AutoModelForCausalLM  # resolves the lazy module


def run_method(method: Method, inputs: Inputs, work: Path, placement: Placement | None = None) -> dict:
    """Produce ``method``'s model; returns what it cost and where the model is (``model``, ``model_base``).

    ``placement`` is where and in what precision RAIT and DPO train (None: the CPU in float32); HCNR
    patches on its device in make_patch's own precision, and interpolation is float32 arithmetic on the host.
    """
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info: dict = {"name": method.name, "kind": method.kind, "family": method.family, "params": method.params}
    info.update(REGISTRY[method.kind].run(method, inputs, work, t0, placement))
    if "method_seconds" in info:
        info["method_seconds"] = round(info["method_seconds"], 3)
        info["peak_rss_mb"] = round(info["peak_rss_mb"], 1)
    info.update(changed_parameters(inputs, info))
    return info


def changed_parameters(inputs: Inputs, info: dict) -> dict:
    """Elements that differ from the SFT model, over the whole model and over block linear weights."""
    if info["kind"] == "sft":
        return {"parameters_changed": 0, "share_of_model": 0.0, "share_of_linear": 0.0}
    sft = open_checkpoint(locate(inputs.sft, inputs.base))
    new = open_checkpoint(locate(info["model"], info.get("model_base")))
    changed = linear_changed = total = linear_total = 0
    names = sft.keys()  # a checkpoint, not a dict: it has keys() but no iteration
    for name in names:
        a = sft.get(name)
        n = a.numel()
        total += n
        diff = n if name not in new else int((new.get(name).to(a.dtype) != a).sum())
        changed += diff
        if a.ndim == 2 and is_block_linear_weight(name):
            linear_total += n
            linear_changed += diff
    return {
        "parameters_changed": changed,
        "share_of_model": changed / total if total else None,
        "share_of_linear": linear_changed / linear_total if linear_total else None,
    }
