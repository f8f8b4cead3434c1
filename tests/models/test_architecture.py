"""The one architecture check (surgery.architecture) and check_pair's use of it, on tiny models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from surgery.architecture import (
    SAME_LAYERS,
    architecture_of,
    require_same_architecture,
    require_same_shapes,
)
from surgery.check import check_pair
from surgery.errors import ArchitectureMismatch, ModelFolderError
from surgery.modelio import StateDictCheckpoint, locate


def _edited_copy(src, dst, **changes):
    """A copy of a model folder whose config.json states other values (the weights are not read)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_same_architecture_passes_and_reports_the_sft(tiny_models):
    llama = locate(str(tiny_models("llama")))
    arch = require_same_architecture(llama, llama)
    cfg = json.loads((llama.path / "config.json").read_text())
    assert arch.model_type == "llama"
    assert arch.summary() == {
        "model_type": "llama",
        "num_hidden_layers": cfg["num_hidden_layers"],
        "hidden_size": cfg["hidden_size"],
    }


def test_different_model_type_raises(tiny_models):
    with pytest.raises(ArchitectureMismatch, match="model_type is 'llama' in the base and 'qwen2'"):
        require_same_architecture(locate(str(tiny_models("llama"))), locate(str(tiny_models("qwen2"))))


def test_different_hidden_size_raises_with_the_callers_reason(tiny_models, tmp_path):
    llama = tiny_models("llama")
    wider = _edited_copy(
        llama, tmp_path / "wider", hidden_size=2 * json.loads((llama / "config.json").read_text())["hidden_size"]
    )
    with pytest.raises(ArchitectureMismatch, match=r"hidden_size .* cannot be probed\.$"):
        require_same_architecture(locate(str(llama)), locate(str(wider)), why="So they cannot be probed.")


def test_layer_check_ignores_what_the_weight_check_catches(tiny_models, tmp_path):
    llama = tiny_models("llama")
    vocab = _edited_copy(llama, tmp_path / "vocab", vocab_size=999)
    base, sft = locate(str(llama)), locate(str(vocab))
    assert require_same_architecture(base, sft, fields=SAME_LAYERS).model_type == "llama"
    with pytest.raises(ArchitectureMismatch, match="vocab_size"):
        require_same_architecture(base, sft)


def test_gpt2_spellings_are_canonical(tiny_models):
    arch = architecture_of(locate(str(tiny_models("gpt2"))))
    cfg = json.loads((tiny_models("gpt2") / "config.json").read_text())
    assert arch.summary() == {"model_type": "gpt2", "num_hidden_layers": cfg["n_layer"], "hidden_size": cfg["n_embd"]}


def test_unreadable_config_is_a_model_folder_error(tiny_models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models("llama"), broken)
    source = locate(str(broken))
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="config.json is not valid JSON"):
        architecture_of(source)


def test_tensor_shapes_must_match():
    base = StateDictCheckpoint({"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)})
    require_same_shapes(["a.weight", "b.weight"], base, base)
    with pytest.raises(ArchitectureMismatch, match=r"a.weight has shape \(2, 3\) in the base and \(3, 2\)"):
        require_same_shapes(["a.weight"], base, StateDictCheckpoint({"a.weight": torch.zeros(3, 2)}))
    with pytest.raises(ArchitectureMismatch, match="The SFT model has no tensor b.weight"):
        require_same_shapes(["b.weight"], base, StateDictCheckpoint({"a.weight": torch.zeros(2, 3)}))


def test_check_pair_raises_the_typed_error(tiny_models):
    with pytest.raises(ArchitectureMismatch, match="not the same architecture"):
        check_pair(locate(str(tiny_models("llama"))), locate(str(tiny_models("qwen2"))))
