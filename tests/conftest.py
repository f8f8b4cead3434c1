"""Shared fixtures: tiny random models of each family, built once per session, fully offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # never the network: tests that need a hub stand one in locally
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SURGERY_DATA_DIR") or REPO.parent / "shared" / "data")
if SHARED_DATA.is_dir():  # the library never guesses ../shared/data: tests that load named benchmarks name it
    os.environ.setdefault("SURGERY_DATA_DIR", str(SHARED_DATA))
#: converted real models are cached in the repository's git-ignored .cache, not the user's ~/.cache
os.environ.setdefault("SURGERY_CACHE", str(REPO / ".cache"))


#: fixtures that build models or read ../shared/data: a test using one is not in the `unit` tier
NOT_UNIT_FIXTURES = {"tiny_models", "tiny_pair", "shared_data"}


def pytest_collection_modifyitems(config, items):
    """Assign every test one tier: `slow` (marked), `tiny` (marked, or uses a model/data fixture), else `unit`.

    Tiers are derived rather than hand-written on each test so that a new test cannot be left without
    one; a test that builds a model without these fixtures must say `@pytest.mark.tiny` itself.
    """
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        if marks & {"slow", "tiny"}:
            continue
        if NOT_UNIT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tiny)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """family -> folder of a tiny random model (built lazily, cached for the session)."""
    from tests.support.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = build_tiny_model(family, root / family, seed=0)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_pair(tiny_models, tmp_path_factory):
    """(base, sft, moved_columns) for a tiny Llama whose first quarter of columns SFT moved."""
    from tests.support.tiny import perturb_columns

    base = tiny_models("llama")
    sft = tmp_path_factory.mktemp("tiny_sft") / "llama"
    moved = perturb_columns(base, sft)
    return base, sft, moved


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"../shared/data is missing ({SHARED_DATA}); the tests need the shared data beside the repo")
    return SHARED_DATA


def write_calibration(folder: Path, n: int = 16) -> tuple[Path, Path]:
    """Small D_hon / D_task JSONL files in both accepted line formats."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    hon, task = folder / "hon.jsonl", folder / "task.jsonl"
    with open(hon, "w") as f:
        for i in range(n):
            if i % 2:
                f.write(json.dumps({"prompt": f"Who wrote the paper number {i}?", "response": "I don't know."}) + "\n")
            else:
                f.write(json.dumps({"prompt": f"What is {i} plus one?", "response": f"{i + 1}"}) + "\n")
    with open(task, "w") as f:
        for i in range(n):
            msgs = [
                {"role": "user", "content": f"Complete the sentence: the country of place {i} is"},
                {"role": "assistant", "content": "France"},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return hon, task


@pytest.fixture()
def calib(tmp_path) -> tuple[Path, Path]:
    return write_calibration(tmp_path / "calib")
