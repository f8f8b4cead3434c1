"""PEFT LoRA adapters merged into their base one tensor at a time, never by loading the whole model.

A LoRA adapter changes a weight ``W`` of the base by ``scaling · (B @ A)``, so the merged model can be
produced tensor by tensor: read the base tensor, read that tensor's two factors from the adapter file,
add the product. :class:`LoraAdapter` plans and does that merge; ``modelio.AdapterCheckpoint`` puts it
behind the ``LazyCheckpoint`` interface, so `patch`, `check` and `apply` read an adapter SFT in the
memory of one tensor, whatever the model's size.

The arithmetic follows PEFT's own ``merge_and_unload`` (peft ``tuners/lora/layer.py``) so that the
tensors are the ones PEFT would produce:

* scaling is ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with ``use_rslora``; ``r`` and
  ``lora_alpha`` come from ``rank_pattern`` / ``alpha_pattern`` where a pattern matches the module;
* the factors are upcast to float32 (PEFT's ``autocast_adapter_dtype``) and the product is computed
  in float32; a linear layer adds it to the weight in float32 and rounds once to the weight's dtype,
  an embedding rounds the product to the weight's dtype first (PEFT's ``Embedding.merge``);
* GPT-2's ``Conv1D`` stores weights transposed (PEFT's ``fan_in_fan_out``), decided from the module
  type as PEFT does, not from the config flag;
* ``lora_bias`` adds ``scaling · b`` to the layer's bias; full tensors in the adapter
  (``modules_to_save``, ``bias="all"/"lora_only"``, saved embedding layers) replace the base tensor.

Module types and weight tying come from the architecture built on the ``meta`` device (no weights,
no memory). Whatever cannot be merged exactly this way is refused with one sentence: other PEFT
methods, LoRA variants (DoRA, ...), initialisations that rewrite the base weights (PiSSA, OLoRA,
CorDA, LoftQ, LoRA-GA), layer replication, LoRA on parameters or trainable tokens, adapters on layers
that are not linear/``Conv1D``/embedding, adapters on or replacing a weight the base ties to another,
and tensors the adapter file holds that name nothing in the base.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import ModelFolderError
from .model_folder import confined, read_json_object, safetensors_header

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
#: the prefix PEFT gives every key of a causal-LM adapter
PEFT_PREFIX = "base_model.model."
#: config fields that select a LoRA variant (peft LoraConfig fields tagged ``is_lora_variant``), and
#: other options whose merge is not a plain ``W + scaling · B @ A``: (field, what the user calls it)
UNSUPPORTED_OPTIONS: tuple[tuple[str, str], ...] = (
    ("use_dora", "DoRA (use_dora)"),
    ("use_qalora", "QALoRA (use_qalora)"),
    ("use_bdlora", "BD-LoRA (use_bdlora)"),
    ("arrow_config", "Arrow routing (arrow_config)"),
    ("alora_invocation_tokens", "activated LoRA (alora_invocation_tokens)"),
    ("velora_config", "VeLoRA (velora_config)"),
    ("monteclora_config", "MonteCLoRA (monteclora_config)"),
    ("kasa_config", "KaSA (kasa_config)"),
    ("layer_replication", "layer replication (layer_replication)"),
    ("target_parameters", "LoRA on parameters (target_parameters)"),
    ("trainable_token_indices", "trainable tokens (trainable_token_indices)"),
)
#: init_lora_weights values whose initialisation rewrites the base weights (the adapter needs that
#: rewritten base, which the plain base folder is not), and the LoRA variant selected through it
BASE_REWRITING_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga", "mica")

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>A|B)(?:\.(?P<adapter>[^.]+))?\.(?P<param>weight|bias)$")
_EMBEDDING_KEY = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<factor>A|B)(?:\.(?P<adapter>[^.]+))?$")


class BaseCheckpoint(Protocol):
    """What building the merge needs of the base model's weights: names and shapes (``LazyCheckpoint``)."""

    def __contains__(self, name: str) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA: adapter-file keys of A and B (and B's bias), its scaling and its layer kind."""

    a: str
    b: str
    scaling: float
    kind: str  # "linear", "conv1d" (weights stored transposed) or "embedding"
    bias: str | None = None


@dataclass
class _Merge:
    """What happens to one base tensor: a full replacement, a LoRA delta, a LoRA bias, or several."""

    replace: str | None = None
    lora: LoraFactors | None = None
    lora_bias: LoraFactors | None = None


def pattern_key(patterns: Iterable[str], module: str) -> str:
    """The ``rank_pattern``/``alpha_pattern`` key that matches ``module`` (PEFT's ``get_pattern_key``)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def read_lora_config(adapter_dir: Path) -> dict[str, Any]:
    """``adapter_config.json``, or one sentence saying why the adapter cannot be merged tensor by tensor."""
    path = adapter_dir / ADAPTER_CONFIG
    config = read_json_object(path)
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise ModelFolderError(
            f"{path}: peft_type is {peft_type!r}; only LoRA adapters can be merged (merge others with PEFT first)."
        )
    for field, label in UNSUPPORTED_OPTIONS:
        if config.get(field):
            raise ModelFolderError(
                f"{path} uses {label}, which is not a plain LoRA sum and cannot be merged tensor by tensor; "
                "merge it with PEFT first."
            )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
        raise ModelFolderError(
            f"{path} was initialised with init_lora_weights={init!r}, which rewrites the base weights; convert it "
            "to a plain LoRA adapter (PEFT's path_initial_model_for_weight_conversion) or merge it with PEFT first."
        )
    for field in ("r", "lora_alpha"):
        value = config.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ModelFolderError(f"{path}: {field} must be a positive number, not {value!r}.")
    for field in ("rank_pattern", "alpha_pattern"):
        value = config.get(field) or {}
        if not isinstance(value, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value.values()
        ):
            raise ModelFolderError(f"{path}: {field} must map module patterns to positive numbers.")
        config[field] = value
    return config


def scaling_of(config: dict[str, Any], module: str) -> tuple[int, float]:
    """``(r, scaling)`` of one module, ``rank_pattern``/``alpha_pattern`` honoured as PEFT does."""
    r = config["rank_pattern"].get(pattern_key(config["rank_pattern"], module), config["r"])
    alpha = config["alpha_pattern"].get(pattern_key(config["alpha_pattern"], module), config["lora_alpha"])
    return int(r), (alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)


@dataclass(frozen=True)
class Skeleton:
    """What the architecture says about the adapted modules: each module's kind and the tied weights."""

    kinds: dict[str, str]  # module path -> "linear" | "conv1d" | "embedding" | class name
    tied: frozenset[str]  # parameter names that share their tensor with another parameter


def build_skeleton(base_dir: Path) -> Skeleton:
    """The base architecture built on the ``meta`` device (no weights): module kinds and tied parameters."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        config = AutoConfig.from_pretrained(str(base_dir))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for an unknown architecture
        raise ModelFolderError(
            f"Could not build the architecture of {base_dir} to merge the adapter into it: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}."
        ) from None
    kinds: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            kinds[name] = "conv1d"
        elif isinstance(module, torch.nn.Embedding):
            kinds[name] = "embedding"
        elif type(module) is torch.nn.Linear:
            kinds[name] = "linear"
        else:
            kinds[name] = type(module).__name__
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    tied = frozenset(n for names in owners.values() if len(names) > 1 for n in names)
    return Skeleton(kinds, tied)


class LoraAdapter:
    """One LoRA adapter, checked against its base, and the merge of each base tensor it changes.

    Only shapes are read when it is built (the adapter file's header, the base's index); ``merge``
    reads the adapter tensors that change one base tensor. ``dtype`` (default: each base tensor's own)
    is the dtype the base is read in before merging, as when PEFT merges into a model loaded in it.
    """

    def __init__(
        self,
        base: BaseCheckpoint,
        adapter_dir: Path,
        base_dir: Path,
        *,
        allow_pickle: bool = False,
        dtype: torch.dtype | None = None,
        skeleton: Skeleton | None = None,
    ):
        self.base = base
        self.adapter_dir = Path(adapter_dir)
        self.dtype = dtype
        self._pickled: dict[str, torch.Tensor] = {}
        self.config = read_lora_config(self.adapter_dir)
        self._file, shapes = self._adapter_file(allow_pickle)
        self._plan = self._make_plan(shapes, skeleton or build_skeleton(Path(base_dir)))
        log.info("adapter %s: %d base tensors changed, merged as they are read", self.adapter_dir, len(self._plan))

    # -- reading the adapter file ------------------------------------------------------------------------

    def _adapter_file(self, allow_pickle: bool) -> tuple[Path, dict[str, tuple[int, ...]]]:
        st, pk = self.adapter_dir / ADAPTER_SAFETENSORS, self.adapter_dir / ADAPTER_PICKLE
        if st.is_file():
            confined(self.adapter_dir, ADAPTER_SAFETENSORS)  # a link out of the folder is refused, as for shards
            return st, safetensors_header(st)
        if pk.is_file():
            if not allow_pickle:
                raise ModelFolderError(
                    f"{self.adapter_dir} only has pickle adapter weights ({pk.name}); pickle can run arbitrary code, "
                    "so it is refused. Convert it to safetensors, or pass --allow-pickle if you trust the file."
                )
            try:
                state = torch.load(str(pk), map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt file
                raise ModelFolderError(f"{pk} is not a readable weights file: {str(exc)[:200]}") from None
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ModelFolderError(f"{pk} does not hold a name -> tensor mapping.")
            self._pickled = state
            return pk, {k: tuple(v.shape) for k, v in self._pickled.items()}
        raise ModelFolderError(f"{self.adapter_dir} has no {ADAPTER_SAFETENSORS}.")

    def _adapter_tensor(self, key: str) -> torch.Tensor:
        if self._file.suffix != ".safetensors":
            return self._pickled[key]
        from safetensors import safe_open

        with safe_open(str(self._file), framework="pt") as h:
            return h.get_tensor(key)

    # -- the plan: which base tensor each adapter tensor changes ----------------------------------------

    def _refuse(self, what: str) -> ModelFolderError:
        return ModelFolderError(f"Adapter {self.adapter_dir}: {what}")

    def _make_plan(self, shapes: dict[str, tuple[int, ...]], skeleton: Skeleton) -> dict[str, _Merge]:
        factors: dict[tuple[str, str, str], str] = {}  # (module, factor A/B/Bbias, kind) -> adapter key
        plan: dict[str, _Merge] = {}
        adapter_names: set[str] = set()
        for key in sorted(shapes):
            name = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
            m = _LORA_KEY.match(name) or _EMBEDDING_KEY.match(name)
            if m is not None:
                if m["adapter"] is not None:
                    adapter_names.add(m["adapter"])
                embedding = m.re is _EMBEDDING_KEY
                param = "weight" if embedding else m["param"]
                if param == "bias" and m["factor"] == "A":
                    raise self._refuse(f"{key} is a bias of lora_A, which PEFT never creates; refused.")
                factor = m["factor"] + ("bias" if param == "bias" else "")
                factors[(m["module"], factor, "embedding" if embedding else "linear")] = key
                continue
            target = name.replace(".base_layer.", ".")
            # a base_layer copy of the stored tied tensor is loaded in place (the tie is kept); anything else
            # replacing a tied weight unties it in PEFT's merge, which a checkpoint storing it once cannot express
            if target in skeleton.tied and (target == name or target not in self.base):
                raise self._refuse(
                    f"{key} replaces {target}, which the base ties to another weight (PEFT's merge unties them); "
                    "untie the base first."
                )
            if target not in self.base:
                raise self._refuse(
                    f"{key} is neither a LoRA factor nor a tensor of the base model, so it cannot be merged exactly."
                )
            if tuple(self.base.shape(target)) != shapes[key]:
                raise self._refuse(
                    f"{key} has shape {shapes[key]} but the base's {target} has {tuple(self.base.shape(target))}."
                )
            plan.setdefault(target, _Merge()).replace = key
        if len(adapter_names) > 1:
            raise self._refuse(f"the file holds several adapters ({', '.join(sorted(adapter_names))}); keep one.")
        modules = sorted({(mod, kind) for mod, _, kind in factors})
        for module, kind in modules:
            a, b = factors.get((module, "A", kind)), factors.get((module, "B", kind))
            if a is None or b is None:
                raise self._refuse(f"module {module} has only one of its two LoRA factors.")
            lora = self._factors(module, kind, a, b, shapes, skeleton, factors.get((module, "Bbias", kind)))
            plan.setdefault(f"{module}.weight", _Merge()).lora = lora
            if lora.bias is not None:
                plan.setdefault(f"{module}.bias", _Merge()).lora_bias = lora
        return plan

    def _factors(
        self,
        module: str,
        kind: str,
        a: str,
        b: str,
        shapes: dict[str, tuple[int, ...]],
        skeleton: Skeleton,
        bias: str | None,
    ) -> LoraFactors:
        """The factors of one module, every shape and the module's type checked against the base."""
        weight = f"{module}.weight"
        layer = skeleton.kinds.get(module)
        if layer is None or weight not in self.base:
            raise self._refuse(f"it adapts {module}, which the base model does not have (or does not store).")
        if weight in skeleton.tied and (layer != "embedding" or self.config.get("ensure_weight_tying")):
            raise self._refuse(
                f"it adapts {module}, whose weight the base ties to the input embeddings; PEFT's merge changes "
                "both, so it cannot be merged tensor by tensor: untie the base first."
            )
        if kind == "embedding" and layer != "embedding":
            raise self._refuse(f"it has embedding factors for {module}, which is a {layer}, not an embedding.")
        if kind == "linear" and layer not in ("linear", "conv1d"):
            raise self._refuse(f"it adapts {module}, a {layer}; only linear, Conv1D and embedding layers are merged.")
        r, scaling = scaling_of(self.config, module)
        sa, sb, sw = shapes[a], shapes[b], tuple(self.base.shape(weight))
        if kind == "embedding":  # A: (r, num_embeddings), B: (embedding_dim, r), delta = (B @ A).T
            expected = (sa[1], sb[0]) if len(sa) == 2 and len(sb) == 2 else None
        else:  # A: (r, in), B: (out, r), delta = B @ A (transposed for Conv1D, which stores (in, out))
            expected = (sb[0], sa[1]) if len(sa) == 2 and len(sb) == 2 else None
            if layer == "conv1d" and expected is not None:
                expected = (expected[1], expected[0])
        if len(sa) != 2 or len(sb) != 2 or sa[0] != r or sb[1] != r or expected != sw:
            raise self._refuse(
                f"the LoRA factors of {module} have shapes {sa} and {sb}, which do not fit rank {r} and the base "
                f"weight's shape {sw}."
            )
        if bias is not None:
            if f"{module}.bias" not in self.base:
                raise self._refuse(f"it has a LoRA bias (lora_bias) for {module}, whose base layer has no bias.")
            if shapes[bias] != tuple(self.base.shape(f"{module}.bias")):
                raise self._refuse(f"the LoRA bias of {module} has shape {shapes[bias]}, not the base bias's.")
        return LoraFactors(a, b, scaling, "embedding" if kind == "embedding" else layer, bias)

    # -- merging -------------------------------------------------------------------------------------------

    @property
    def changed(self) -> list[str]:
        """The base tensors this adapter changes (sorted)."""
        return sorted(self._plan)

    def merge(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Base tensor ``name`` (``t``) with this adapter merged into it (PEFT's arithmetic, see the module doc).

        The sums are done in place, as PEFT does them (``weight.data += delta``: computed in float32, rounded
        once to the weight's dtype), so a merge holds the tensor and one float32 product, nothing more. ``t``
        may be modified: callers pass a tensor they own (a fresh read).
        """
        if self.dtype is not None and t.is_floating_point():
            t = t.to(self.dtype)
        merge = self._plan.get(name)
        if merge is None:
            return t
        dtype = t.dtype
        if merge.replace is not None:
            t = self._adapter_tensor(merge.replace).to(dtype, copy=True)
        if merge.lora is not None:
            f = merge.lora
            a, b = self._adapter_tensor(f.a).float(), self._adapter_tensor(f.b).float()
            delta = (b @ a).mul_(f.scaling)
            del a, b
            if f.kind == "embedding":  # PEFT's Embedding.merge rounds the delta to the weight's dtype first
                t.add_(delta.T.to(dtype))
            else:
                t.add_(delta.T if f.kind == "conv1d" else delta)
            del delta
        if merge.lora_bias is not None and merge.lora_bias.bias is not None:
            t.add_(self._adapter_tensor(merge.lora_bias.bias).float().mul_(merge.lora_bias.scaling))
        return t.contiguous()
