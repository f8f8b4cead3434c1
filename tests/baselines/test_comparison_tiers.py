"""Every method spec of the comparison tiers parses, so a typo fails here, not an hour into a run; the tiers
are one list, used by `surgery bench` (its default) and by `python -m benchmarks.comparison`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from surgery import recipes
from surgery.baselines import tiers
from surgery.baselines.methods import parse_method
from surgery.baselines.tiers import DEFAULT_TIER, RECIPE_PATCH, TIERS, methods_for
from surgery.errors import OptionError


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_every_spec_in_tier_parses(tier: str) -> None:
    specs = TIERS[tier]
    assert specs, f"tier {tier} is empty"
    assert len(set(specs)) == len(specs), f"tier {tier} lists a method twice"
    for spec in specs:
        assert parse_method(spec).name == spec


def test_tiers_are_documented() -> None:
    for tier in TIERS:
        assert f"``{tier}``" in tiers.__doc__, f"tier {tier} is missing from tiers.py's docstring"


def test_recipe_tier_patches_with_the_recipes_options() -> None:
    patch = json.loads((recipes.ROOT / "smollm2" / "recipe.json").read_text(encoding="utf-8"))["patch"]
    options = parse_method(RECIPE_PATCH).params["options"]
    assert {k: options[k] for k in patch} == patch
    assert RECIPE_PATCH in TIERS["recipe"]


def test_default_tier_is_what_surgery_bench_always_ran() -> None:
    assert TIERS[DEFAULT_TIER] == (
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
    )


def test_methods_for_joins_tiers_in_order_without_repeats() -> None:
    assert methods_for() == TIERS[DEFAULT_TIER]
    assert methods_for((), ("interp:0.3",)) == ("interp:0.3",)
    joined = methods_for(("core", "full"), ("hcnr", "dpo:8"))
    assert joined == TIERS["core"] + TIERS["full"] + ("dpo:8",)
    assert methods_for(default="paper") == TIERS["paper"]
    with pytest.raises(OptionError, match="Unknown tier 'cor'; tiers are quick, core"):
        methods_for(("cor",))


def test_comparison_script_is_a_thin_entry_point() -> None:
    """benchmarks/comparison.py runs as ``python -m``: no sys.path surgery, its tiers come from the library."""
    from benchmarks import comparison

    source = Path(comparison.__file__).read_text(encoding="utf-8")
    assert "sys.path" not in source and "argparse" not in source
    assert "TIERS = " not in source
    assert comparison.main.name == "main"
