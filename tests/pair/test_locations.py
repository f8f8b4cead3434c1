"""Data and cache locations come from options or the environment, never from where the code sits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import surgery
from surgery import recipes
from surgery.pair import build as B
from surgery.pair import gguf as G


def test_cache_root_is_the_user_cache_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv(G.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert G.cache_root() == tmp_path / "home" / ".cache" / "surgery"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert G.cache_root() == tmp_path / "xdg" / "surgery"
    monkeypatch.setenv(G.CACHE_ENV, str(tmp_path / "mine"))
    assert G.cache_root() == tmp_path / "mine"
    assert B.pair_root({"name": "smollm2"}) == tmp_path / "mine" / "pair" / "smollm2"


def test_recipes_are_found_in_their_own_package():
    assert B.RECIPES == recipes.ROOT
    assert set(B.recipe_names()) >= {"smollm2", "gemma3_270m"}
    assert (B.recipe_dir_of("smollm2") / "recipe.json").is_file()


def test_no_library_path_is_computed_outside_its_package():
    """``Path(__file__).parents[k]`` may name the module's own package folders, never the folder around it."""
    root = Path(surgery.__file__).resolve().parent
    offenders = []
    for path in root.rglob("*.py"):
        depth = len(path.relative_to(root).parts) - 1  # parents[depth] is surgery/ itself
        for m in re.finditer(r"__file__\)\.resolve\(\)\.parents\[(\d+)\]", path.read_text(encoding="utf-8")):
            if int(m.group(1)) > depth:
                offenders.append(f"{path.relative_to(root)}: parents[{m.group(1)}]")
        if re.search(r"__file__\)\.resolve\(\)\.parent\.parent", path.read_text(encoding="utf-8")) and depth < 1:
            offenders.append(str(path.relative_to(root)))
    assert not offenders, offenders


@pytest.mark.parametrize("module", ["surgery.baselines", "surgery.training", "surgery.hcnr", "surgery.evaluation"])
def test_the_product_never_imports_the_demo_pair(module):
    """Dependency direction: the demo pair uses the product, never the reverse."""
    folder = Path(surgery.__file__).resolve().parent / module.split(".")[1]
    for path in folder.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(
            r"^\s*from \.\.pair\b|^\s*from surgery\.pair\b|^\s*import surgery\.pair\b", text, re.MULTILINE
        ), path
