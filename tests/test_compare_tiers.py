"""Every method spec in benchmarks/compare.py's tiers parses, so a typo fails here, not an hour into a run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from surgery.baselines.methods import parse_method

ROOT = Path(__file__).resolve().parents[1]


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare_bench", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMPARE = _compare_module()
TIERS = COMPARE.TIERS


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_every_spec_in_tier_parses(tier: str) -> None:
    specs = TIERS[tier]
    assert specs, f"tier {tier} is empty"
    assert len(set(specs)) == len(specs), f"tier {tier} lists a method twice"
    for spec in specs:
        assert parse_method(spec).name == spec


def test_tiers_are_documented() -> None:
    doc = (ROOT / "benchmarks" / "compare.py").read_text(encoding="utf-8").split('"""')[1]
    for tier in TIERS:
        assert f"``{tier}``" in doc, f"tier {tier} is missing from compare.py's docstring"


def test_recipe_tier_patches_with_the_recipes_options() -> None:
    import json

    patch = json.loads((ROOT / "recipes" / "smollm2" / "recipe.json").read_text(encoding="utf-8"))["patch"]
    options = parse_method(COMPARE.RECIPE_PATCH).params["options"]
    assert {k: options[k] for k in patch} == patch
    assert COMPARE.RECIPE_PATCH in TIERS["recipe"]
