"""THE list of comparison tiers: named groups of method specs that ``surgery bench`` and
``python -m benchmarks.comparison`` run (spec grammar: :mod:`surgery.baselines.methods`).

Tiers share one output folder and every method's result is reused by a later run with the same
inputs, so tiers can be added one after the other (list every tier the table should cover):

- ``quick``: what ``surgery bench`` runs when no method is named: base, SFT, HCNR defaults, HCNR with
  honesty-only Hessians, restore-only, random columns, the compact patch, LoRA-RAIT at 160 and 480
  examples, interpolation;
- ``core``: base, SFT, HCNR defaults, HCNR with honesty-only Hessians, restore-only, random columns
  with compensation (3 seeds), the compact patch, LoRA-RAIT at 160 and 480 examples, interpolation;
- ``ablations``: Fisher at the base, task-only Hessians, summed compensation, output rows, random
  restore-only, the R_IW × R_CW grid;
- ``budgets``: LoRA-RAIT at HCNR's own data (256) and wall time, HCNR at 32/64 calibration examples,
  more interpolation weights, DPO and full-fine-tune RAIT at 480;
- ``recipe``: the SmolLM2 recipe's patch (``compensation=protect,r_iw=0.125,r_cw=0.8``) and the same
  compensation at the paper's size (0.5 x 0.4) against the pair, HCNR's defaults, restore-only, random
  columns (3 seeds), the compact patch, interpolation, LoRA-RAIT at HCNR's data (256) and wall time
  (200 s) and at 64/160/480 examples, and DPO at 480 (the README's table);
- ``paper``: LoRA-RAIT at the paper's 5000 examples (about half an hour on 2 cores);
- ``grid``: ``protect`` compensation over patch shapes (R_IW x R_CW from 1 x 0.1 to 1 x 1, the large
  patch with a heavier task weight) and the recipe's shape with random columns and with other
  64-example calibration subsets (how the recipe's 0.125 x 0.8 was found, and how robust it is);
- ``full``: full-fine-tune RAIT and DPO at 480 examples (the LoRA runs' full-weight counterparts).

The ``recipe`` tier's patch is derived from ``surgery/recipes/smollm2/recipe.json`` (:func:`recipe_patch_spec`),
so the table follows the recipe instead of a copy of its numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from .. import recipes
from ..errors import OptionError

#: the tier ``surgery bench`` runs when no ``--method`` is given
DEFAULT_TIER = "quick"


def recipe_patch_spec(recipe: str = "smollm2") -> str:
    """The bundled recipe's patch as a method spec (``hcnr:k=v,...``), so the table follows recipe.json."""
    path = recipes.ROOT / recipe / "recipe.json"
    patch = json.loads(path.read_text(encoding="utf-8"))["patch"]
    return "hcnr:" + ",".join(f"{k}={v}" for k, v in patch.items())


#: the SmolLM2 recipe's patch as a spec (the ``recipe`` tier's headline row and the comparison's reference)
RECIPE_PATCH = recipe_patch_spec()

TIERS: dict[str, tuple[str, ...]] = {
    # the matched-budget comparison `surgery bench` runs by default
    "quick": (
        "base",
        "sft",
        "hcnr",
        "hcnr:hessian-hon",
        "hcnr:restore-only",
        "hcnr:random-s0",
        "hcnr:compact",
        "rait-lora:160",
        "rait-lora:480",
        "interp:0.5",
    ),
    # in order of what matters most, so a run cut short has the key rows first
    "core": (
        "base",
        "sft",
        "hcnr",
        "rait-lora:160",
        "rait-lora:480",
        "hcnr:hessian-hon",
        "hcnr:restore-only",
        "hcnr:random-s0",
        "interp:0.5",
        "hcnr:random-s1",
        "hcnr:random-s2",
        "hcnr:compact",
    ),
    "ablations": (
        "hcnr:fisher-at-base",
        "hcnr:hessian-task",
        "hcnr:compensation-summed",
        "hcnr:neuron-row",
        "hcnr:random-restore-only",
        "hcnr:size-0.25x0.2",
        "hcnr:size-0.5x0.2",
        "hcnr:size-0.75x0.4",
        "hcnr:size-0.5x0.6",
        "hcnr:hessian_data=hon,r_iw=0.25",
    ),
    "budgets": (
        "rait-lora:256",
        "hcnr:max_samples=32",
        "hcnr:max_samples=64",
        "interp:0.25",
        "interp:0.75",
        "dpo:480",
        "rait-full:480",
    ),
    "paper": ("rait-lora:5000",),
    "grid": (
        "hcnr:compensation=protect,r_iw=0.5,r_cw=0.2",
        "hcnr:compensation=protect,r_iw=0.125,r_cw=0.8",
        "hcnr:compensation=protect,r_iw=1,r_cw=0.1",
        "hcnr:compensation=protect,r_iw=0.75,r_cw=0.6,task_weight=2",
        "hcnr:compensation=protect,r_iw=1,r_cw=1",
        "hcnr:compensation=protect,r_iw=0.1,r_cw=1",
        "hcnr:compensation=protect,r_iw=0.2,r_cw=1",
        "hcnr:compensation=protect,r_iw=0.05,r_cw=1",
        "hcnr:compensation=protect,r_iw=0.25,r_cw=0.8",
        "hcnr:compensation=protect,r_iw=0.125,r_cw=0.8,selection=random",
        "hcnr:compensation=protect,r_iw=0.125,r_cw=0.8,max_samples=64",
        "hcnr:compensation=protect,r_iw=0.125,r_cw=0.8,max_samples=64,seed=1",
    ),
    "full": ("rait-full:480", "dpo-full:480"),
    # the SmolLM2 recipe's patch (protect at 0.125 x 0.8) against the pair, HCNR's defaults, its controls
    # (restore-only, random columns x3, compact, interpolation) and re-tuning at matched data and time
    "recipe": (
        "base",
        "sft",
        RECIPE_PATCH,
        "hcnr:compensation=protect",
        "rait-lora:160",
        "hcnr",
        "hcnr:restore-only",
        "hcnr:selection=random,seed=0,compensation=protect",
        "rait-lora:480",
        "interp:0.25",
        "dpo:480",
        "hcnr:compensation=protect,r_iw=0.25,r_cw=0.4",
        "rait-lora:256",
        "rait-lora:s=200",
        "hcnr:selection=random,seed=1,compensation=protect",
        "hcnr:selection=random,seed=2,compensation=protect",
        "interp:0.5",
        "hcnr:compensation=protect,task_weight=0.5",
        "hcnr:compensation=protect,r_iw=0.75,r_cw=0.6",
        "hcnr:hessian-hon",
        "hcnr:random-s0",
        "hcnr:compensation=protect,max_samples=32",
        "rait-lora:64",
        "interp:0.9",
        "interp:0.75",
    ),
}


def methods_for(tiers: Iterable[str] = (), extra: Sequence[str] = (), default: str = DEFAULT_TIER) -> tuple[str, ...]:
    """The specs of ``tiers`` in order, then ``extra``, each once; the ``default`` tier when both are empty."""
    names = list(tiers) or ([] if extra else [default])
    unknown = [t for t in names if t not in TIERS]
    if unknown:
        raise OptionError(f"Unknown tier {unknown[0]!r}; tiers are {', '.join(TIERS)}.")
    methods: list[str] = []
    for spec in [m for t in names for m in TIERS[t]] + list(extra):
        if spec not in methods:
            methods.append(spec)
    return tuple(methods)
